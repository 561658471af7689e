"""One error shape (RFC 9457 problem+json) on every error path, in and outside DRF views."""

import pytest
from django.test import Client

from tests.api.conftest import assert_problem, seed_payload

pytestmark = pytest.mark.django_db


def test_unknown_api_url_is_a_problem_404(landon):
    body = assert_problem(landon.get("/api/v1/nope"), 404)
    assert body["code"] == "not_found" and body["instance"] == "/api/v1/nope" and body["request_id"]


def test_unknown_lease_is_a_problem_404(landon):
    assert_problem(landon.get("/api/v1/leases/999999"), 404)


def test_method_not_allowed_is_a_problem_405(landon):
    response = landon.client.put("/api/v1/containers", "{}", content_type="application/json",
                                 HTTP_AUTHORIZATION=f"Bearer {landon.raw}")
    assert_problem(response, 405)
    assert_problem(Client().post("/api/schema/"), 405)


def test_missing_credentials_is_a_401_with_a_challenge():
    response = Client().get("/api/v1/leases")
    assert assert_problem(response, 401)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer nonsense", "Bearer gpc_abc_def", "Bearer " + "x" * 5000])
def test_bad_token_is_a_401(db, header):
    assert_problem(Client().get("/api/v1/leases", HTTP_AUTHORIZATION=header), 401)


def test_server_error_is_a_problem_500(landon, monkeypatch):
    from tenants.api import views

    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(views.LeaseListView, "get", boom)
    client = Client(raise_request_exception=False)
    response = client.get("/api/v1/leases", HTTP_AUTHORIZATION=f"Bearer {landon.raw}")
    body = assert_problem(response, 500)
    assert "bug" not in response.content.decode() and body["request_id"] == response["X-Request-Id"]


def test_throttled_is_a_429_with_retry_after(landon, tasks, monkeypatch):
    from tenants.api.throttles import TokenRateThrottle

    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"api": "100/min", "create": "2/min"})
    for _ in range(2):
        assert landon.post("/api/v1/containers", seed_payload(gpus=8)).status_code == 202
    response = landon.post("/api/v1/containers", seed_payload(gpus=8))
    assert assert_problem(response, 429)["code"] == "throttled"
    assert int(response["Retry-After"]) >= 1
    assert landon.get("/api/v1/leases").status_code == 200  # reads have their own budget


def test_ui_pages_keep_html_errors(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and not response["Content-Type"].startswith("application/problem+json")


def test_disallowed_host_is_a_problem_400(db):
    response = Client().get("/api/v1/leases", HTTP_HOST="evil.example")
    assert_problem(response, 400)


def test_every_answer_has_a_request_id(landon):
    response = landon.get("/api/v1/nope", HTTP_X_REQUEST_ID="req-77")
    assert response["X-Request-Id"] == "req-77" and response.json()["request_id"] == "req-77"


@pytest.mark.parametrize("name", ["%00", "a%00b", "UPPER", "x" * 300])
def test_odd_tenancy_names_are_404_not_500(callers, name):
    assert_problem(callers["viewer"].get(f"/api/v1/tenancies/{name}"), 404)
