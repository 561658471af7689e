"""The permission matrix: anonymous, tenant A, tenant B, viewer, support, admin × every endpoint and
method — the status, and nothing visible or changed across tenants."""

import pytest

from console.models import Operation
from fleet.models import Server
from tenants.models import Lease
from tests.api.conftest import PROBLEM, seed_payload
from tests.factories import make_server

pytestmark = pytest.mark.django_db
WHO = ["anonymous", "tenant_a", "tenant_b", "viewer", "support", "admin"]
OPS_READ = {"anonymous": 401, "tenant_a": 403, "tenant_b": 403, "viewer": 200, "support": 200, "admin": 200}
OPS_ACT = {**OPS_READ, "viewer": 403}
OPS_CONFIRM = {**OPS_ACT, "support": 202, "admin": 202}

# (method, path template, body, expected status per principal)
MATRIX = [
    ("POST", "/api/v1/containers", seed_payload(),
     {"anonymous": 401, "tenant_a": 202, "tenant_b": 403, "viewer": 403, "support": 403, "admin": 403}),
    ("GET", "/api/v1/leases", None,
     {"anonymous": 401, "tenant_a": 200, "tenant_b": 200, "viewer": 200, "support": 200, "admin": 200}),
    ("GET", "/api/v1/leases/{lease}", None,
     {"anonymous": 401, "tenant_a": 200, "tenant_b": 404, "viewer": 200, "support": 200, "admin": 200}),
    ("DELETE", "/api/v1/leases/{lease}", None,
     {"anonymous": 401, "tenant_a": 202, "tenant_b": 404, "viewer": 403, "support": 202, "admin": 202}),
    ("GET", "/api/v1/me", None,
     {"anonymous": 401, "tenant_a": 200, "tenant_b": 200, "viewer": 200, "support": 200, "admin": 200}),
    ("GET", "/api/v1/tenancies/landon", None,
     {"anonymous": 401, "tenant_a": 200, "tenant_b": 403, "viewer": 200, "support": 200, "admin": 200}),
    ("GET", "/api/v1/tenancies/nobody", None,
     {"anonymous": 401, "tenant_a": 403, "tenant_b": 403, "viewer": 404, "support": 404, "admin": 404}),
    *(("GET", f"/api/v1/{name}", None, OPS_READ)
      for name in ("servers", "gpus", "partitions", "allocations", "events", "operations")),
    ("GET", "/api/v1/servers/{server}", None, OPS_READ),
    ("GET", "/api/v1/gpus/{gpu}", None, OPS_READ),
    ("POST", "/api/v1/servers/{server}/cordon/", {"dry_run": True}, OPS_ACT),
    ("POST", "/api/v1/gpus/{gpu}/scrub/", {"dry_run": True}, OPS_ACT),
    ("POST", "/api/v1/servers/{server}/cordon/", {"preview_token": "confirm"}, OPS_CONFIRM),
]
CASES = [(m, p, b, who, exp[who]) for m, p, b, exp in MATRIX for who in WHO]


def _confirm_token(server):
    from fleet.operator_actions import preview_action

    return preview_action(action="cordon", target=server).token


@pytest.mark.parametrize(("method", "path", "body", "who", "expected"), CASES,
                         ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES])
def test_matrix(callers, tasks, method, path, body, who, expected):
    server = make_server()
    lease = Lease.objects.get(pk=callers["tenant_a"].post("/api/v1/containers", seed_payload()).json()["id"])
    if body == {"preview_token": "confirm"}:
        body = {"preview_token": _confirm_token(server)}
    url = path.format(lease=lease.pk, server=server.pk, gpu=server.gpus.first().pk)
    before = (Lease.objects.count(), lease.state, Server.objects.get(pk=server.pk).state, Operation.objects.count())
    response = callers[who].call(method, url, body)
    assert response.status_code == expected, (response.status_code, response.content[:300])
    if expected >= 400:
        assert response["Content-Type"].startswith(PROBLEM)
        lease.refresh_from_db()
        after = (Lease.objects.count(), lease.state, Server.objects.get(pk=server.pk).state, Operation.objects.count())
        assert after == before  # nothing changed
    if who == "tenant_b" and method == "GET" and path == "/api/v1/leases":
        assert response.json()["results"] == []  # nothing of A's visible


def test_session_login_counts_as_an_operator(callers, client, django_user_model):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create(username="sess")
    user.groups.add(Group.objects.get(name="viewer"))
    client.force_login(user)
    assert client.get("/api/v1/servers").status_code == 200
    nobody = django_user_model.objects.create(username="norole")
    client.force_login(nobody)
    assert client.get("/api/v1/servers").status_code == 403
