"""POST /api/v1/containers: the seed's payload, 202 from the recording transaction, isolation, bad input."""

import pytest

from console.models import AuditEvent
from tenants.models import Lease, Tenant
from tenants.states import LeaseState, TenantState
from tests.api.conftest import SEED_IMAGE, assert_problem, seed_payload
from tests.factories import make_server

pytestmark = pytest.mark.django_db


def test_seed_payload_is_accepted_and_placed(landon, tasks):
    make_server()
    response = landon.post("/api/v1/containers", seed_payload())
    assert response.status_code == 202, response.content
    body = response.json()
    assert response["Location"] == f"/api/v1/leases/{body['id']}"
    assert body["state"] == LeaseState.PLACED and body["container-url"] == SEED_IMAGE and body["gpus"] == 1
    assert body["links"]["self"] == f"/api/v1/leases/{body['id']}"
    assert [c["type"] for c in body["conditions"]] == ["Scheduled"] and body["conditions"][0]["status"] == "True"
    assert body["server"]["hostname"] and len(body["gpu_devices"]) == 1 and body["partition"]["size"] == 1
    # Nothing reached an agent or the cluster on the request path: only tasks were queued.
    assert tasks.names() == ["lease_advance"]


def test_no_capacity_is_pending_with_insufficient_capacity(landon, tasks):
    response = landon.post("/api/v1/containers", seed_payload(gpus=8))
    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "pending" and body["failure_reason"] == "InsufficientCapacity"
    [scheduled] = body["conditions"]
    assert (scheduled["type"], scheduled["status"]) == ("Scheduled", "False")
    assert scheduled["reason"] == "InsufficientCapacity"


def test_first_container_provisions_a_pending_tenancy(callers, tasks):
    landon = callers["tenant_a"]
    Tenant.objects.filter(pk=landon.tenant.pk).update(state=TenantState.PENDING)
    response = landon.post("/api/v1/containers", seed_payload())
    assert response.status_code == 202 and response.json()["state"] == "pending"
    assert tasks.names() == ["tenancy_provision"]


def test_optional_fields_are_kept(landon, tasks):
    body = seed_payload(gpus=2, command=["/bin/sh", "-c"], args=["nvidia-smi"], env={"FOO": "bar"},
                        max_pending_seconds=60)
    data = landon.post("/api/v1/containers", body).json()
    assert (data["gpus"], data["command"], data["args"], data["env"], data["max_pending_seconds"]) == (
        2, ["/bin/sh", "-c"], ["nvidia-smi"], {"FOO": "bar"}, 60)


def test_another_tenancy_is_forbidden_and_creates_nothing(callers, tasks):
    response = callers["tenant_b"].post("/api/v1/containers", seed_payload())
    assert_problem(response, 403)
    assert not Lease.objects.exists() and tasks.queued == []


def test_unknown_tenancy_is_never_created(landon, tasks):
    response = landon.post("/api/v1/containers", seed_payload(tenancy="newcomer"))
    assert_problem(response, 403)
    assert not Tenant.objects.filter(name="newcomer").exists()


@pytest.mark.parametrize("role", ["viewer", "support", "admin", "anonymous"])
def test_operators_and_anonymous_cannot_create(callers, role):
    response = callers[role].post("/api/v1/containers", seed_payload())
    assert_problem(response, 401 if role == "anonymous" else 403)
    assert not Lease.objects.exists()


BAD = [
    ("malformed json", b'{"container-url": ', None),
    ("not an object", b"[1, 2]", "non_field_errors"),
    ("unknown field", seed_payload(colour="blue"), "colour"),
    ("missing image", {"tenancy": "landon"}, "container-url"),
    ("image number", seed_payload(**{"container-url": 5}), "container-url"),
    ("gpus 0", seed_payload(gpus=0), "gpus"),
    ("gpus 3", seed_payload(gpus=3), "gpus"),
    ("gpus 9", seed_payload(gpus=9), "gpus"),
    ("gpus string", seed_payload(gpus="8"), "gpus"),
    ("gpus negative", seed_payload(gpus=-1), "gpus"),
    ("gpus bool", seed_payload(gpus=True), "gpus"),
    ("image spaces", seed_payload(**{"container-url": "nvcr.io/nvidia/cuda sample:1"}), "container-url"),
    ("image uppercase", seed_payload(**{"container-url": "nvcr.io/NVIDIA/Cuda:1"}), "container-url"),
    ("image shell", seed_payload(**{"container-url": "nvcr.io/x;rm -rf /:1"}), "container-url"),
    ("image backtick", seed_payload(**{"container-url": "nvcr.io/x/`id`:1"}), "container-url"),
    ("image 4000", seed_payload(**{"container-url": "nvcr.io/" + "a" * 4000}), "container-url"),
    ("tenancy capitals", seed_payload(tenancy="Landon"), "tenancy"),
    ("tenancy dots", seed_payload(tenancy="lan.don"), "tenancy"),
    ("tenancy underscore", seed_payload(tenancy="lan_don"), "tenancy"),
    ("tenancy too long", seed_payload(tenancy="l" * 57), "tenancy"),
    ("command not list", seed_payload(command="nvidia-smi"), "command"),
    ("env bad name", seed_payload(env={"1X": "y"}), "env"),
    ("env value number", seed_payload(env={"X": 1}), "env"),
    ("max pending 0", seed_payload(max_pending_seconds=0), "max_pending_seconds"),
    ("max pending string", seed_payload(max_pending_seconds="60"), "max_pending_seconds"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(landon, tasks, case, body, field):
    before = AuditEvent.objects.count()
    response = landon.post("/api/v1/containers", raw=body) if isinstance(body, bytes) else landon.post(
        "/api/v1/containers", body)
    problem = assert_problem(response, 400, field=field)
    assert problem["errors"] or case == "malformed json"
    assert not Lease.objects.exists() and tasks.queued == [] and AuditEvent.objects.count() == before


def test_one_answer_names_every_bad_field(landon, tasks):
    """A client fixes its request once, not once per field: unknown fields, a bad image and a bad
    GPU count are reported together."""
    response = landon.post("/api/v1/containers", seed_payload(
        **{"container-url": "nvcr.io/x/bad image:1", "gpus": 3, "colour": "blue"}))
    problem = assert_problem(response, 400)
    codes = {error["field"]: error["code"] for error in problem["errors"]}
    assert codes == {"container-url": "invalid_image", "gpus": "invalid_gpu_count", "colour": "unknown_field"}
    assert not Lease.objects.exists()


def test_a_too_long_image_is_one_short_error(landon, tasks):
    body = seed_payload(**{"container-url": "nvcr.io/" + "A" * 4000})
    problem = assert_problem(landon.post("/api/v1/containers", body), 400)
    [error] = problem["errors"]  # not also the parser's verdict, echoing the 4,000 characters
    assert (error["field"], error["code"]) == ("container-url", "max_length") and len(error["message"]) < 100


def test_huge_body_is_a_413_before_anything(landon, tasks, settings):
    response = landon.post("/api/v1/containers", seed_payload(env={"X": "y" * 70_000}))
    assert_problem(response, 413)
    assert not Lease.objects.exists()


@pytest.mark.parametrize(("size", "status"), [(100_000, 413), (100, None)])
def test_a_chunked_body_is_read_at_most_one_byte_past_the_limit(settings, size, status):
    """No Content-Length (a chunked body on ASGI): the middleware reads limit + 1 bytes at most."""
    from io import BytesIO

    from django.http import HttpResponse
    from django.test import RequestFactory

    from console.api_errors import ProblemMiddleware

    body = b"x" * size
    request = RequestFactory().generic("POST", "/api/v1/containers", body, content_type="application/json")
    del request.META["CONTENT_LENGTH"]
    stream = BytesIO(body)
    request._stream = stream
    seen = []
    response = ProblemMiddleware(lambda r: seen.append(r.body) or HttpResponse(status=204))(request)
    if status:
        import json

        assert response.status_code == status and response["Content-Type"] == "application/problem+json"
        assert json.loads(response.content)["code"] == "payload_too_large"
        assert seen == [] and stream.tell() == settings.API_MAX_BODY_BYTES + 1
    else:
        assert response.status_code == 204 and seen == [body] and request.META["CONTENT_LENGTH"] == "100"


def test_non_json_content_type_is_a_415(landon):
    response = landon.client.post("/api/v1/containers", "container-url=x", content_type="text/plain",
                                  HTTP_AUTHORIZATION=f"Bearer {landon.raw}")
    assert_problem(response, 415)
