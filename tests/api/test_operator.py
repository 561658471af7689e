"""Operator endpoints: fleet reads (paginated, filtered, fixed query counts) and actions with preview tokens."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from console.models import AuditEvent, Operation
from fleet.models import Gpu, Server
from fleet.operator_actions import preview_action
from fleet.services import gpu_quarantine
from tests.api.conftest import assert_problem, seed_payload
from tests.factories import make_server
from tests.factories.fleet import TEST_ACTOR

pytestmark = pytest.mark.django_db


@pytest.fixture
def support(callers):
    return callers["support"]


def test_lists_filter_and_page(support, tasks):
    servers = [make_server(), make_server()]
    Server.objects.filter(pk=servers[1].pk).update(state="cordoned")
    assert [s["id"] for s in support.get("/api/v1/servers", {"state": "cordoned"}).json()["results"]] == [servers[1].pk]
    gpus = support.get("/api/v1/gpus", {"server": servers[0].pk, "page_size": 5}).json()
    assert len(gpus["results"]) == 5 and gpus["next"]
    rest = support.get(gpus["next"]).json()
    assert len(rest["results"]) == 3 and {g["server_id"] for g in rest["results"]} == {servers[0].pk}
    assert support.get("/api/v1/partitions", {"size": 8}).json()["results"][0]["size"] == 8
    assert_problem(support.get("/api/v1/gpus", {"state": "melted"}), 400, field="state")
    assert_problem(support.get("/api/v1/gpus", {"server": "x"}), 400, field="server")
    assert_problem(support.get("/api/v1/gpus", {"colour": "red"}), 400, field="colour")
    assert_problem(support.get("/api/v1/events", {"cursor": "bz14"}), 400, field="cursor")  # base64 of "o=x"


def test_events_filter_by_verb_prefix(support, tasks):
    server = make_server()
    gpu_quarantine(gpu=server.gpus.first(), actor=TEST_ACTOR, reason="Xid 79")
    events = support.get("/api/v1/events", {"verb": "fleet.gpu"}).json()["results"]
    assert events and all(e["verb"].startswith("fleet.gpu") for e in events)


@pytest.mark.parametrize("path", ["/api/v1/gpus", "/api/v1/allocations", "/api/v1/servers", "/api/v1/events"])
def test_list_query_counts_do_not_grow_with_rows(callers, support, tasks, path):
    make_server()

    def count():
        with CaptureQueriesContext(connection) as queries:
            assert support.get(path, {"page_size": 100}).status_code == 200
        return len(queries)

    callers["tenant_a"].post("/api/v1/containers", seed_payload())
    support.get(path)  # the token's last_used_at is written at most once a minute: not in the counts
    few = count()
    make_server()
    make_server()
    for n in (1, 2, 4):
        callers["tenant_a"].post("/api/v1/containers", seed_payload(gpus=n))
    assert count() == few


def test_preview_then_confirm_returns_the_operation_and_audits(support, tasks):
    server = make_server()
    preview = support.post(f"/api/v1/servers/{server.pk}/drain/", {"dry_run": True}).json()
    assert preview["allowed"] and preview["blockers"] == [] and preview["token"]
    assert preview["summary"].startswith("Drain ")
    assert Server.objects.get(pk=server.pk).state == "active"  # a dry run changes nothing
    response = support.post(f"/api/v1/servers/{server.pk}/drain/", {"preview_token": preview["token"]})
    assert response.status_code == 202
    op = response.json()
    assert op["kind"] == "server.drain" and response["Location"] == f"/api/v1/operations/{op['id']}"
    assert support.get(f"/api/v1/operations/{op['id']}").json()["id"] == op["id"]
    # The same preview and audit as the console's (fleet.previews): the action's event holds its impact.
    event = AuditEvent.objects.get(verb="fleet.action.server.drain", actor_text="op-support", source="api")
    assert event.after["impact"] and event.after["summary"] == preview["summary"]


def test_a_change_since_the_preview_is_a_409_with_a_fresh_preview(support, tasks):
    server = make_server()
    token = support.post(f"/api/v1/servers/{server.pk}/cordon/", {"dry_run": True}).json()["token"]
    gpu_quarantine(gpu=server.gpus.first(), actor=TEST_ACTOR, reason="Xid 48")  # the server changed
    response = support.post(f"/api/v1/servers/{server.pk}/cordon/", {"preview_token": token})
    body = assert_problem(response, 409)
    assert body["preview"]["token"] and body["preview"]["token"] != token
    assert Server.objects.get(pk=server.pk).state == "active" and not Operation.objects.exists()
    again = support.post(f"/api/v1/servers/{server.pk}/cordon/", {"preview_token": body["preview"]["token"]})
    assert again.status_code == 202 and Server.objects.get(pk=server.pk).state == "cordoned"


def test_a_token_of_another_action_or_target_is_refused(support, tasks):
    a, b = make_server(), make_server()
    token = preview_action(action="cordon", target=a).token
    assert_problem(support.post(f"/api/v1/servers/{b.pk}/cordon/", {"preview_token": token}), 409)
    assert_problem(support.post(f"/api/v1/servers/{a.pk}/drain/", {"preview_token": token}), 409)
    assert_problem(support.post(f"/api/v1/servers/{a.pk}/cordon/", {"preview_token": "forged"}), 409)


def test_blocked_action_shows_blockers_and_is_refused(support, tasks):
    server = make_server()
    gpu = server.gpus.first()
    preview = support.post(f"/api/v1/gpus/{gpu.pk}/clear-quarantine/", {"dry_run": True}).json()
    assert not preview["allowed"] and "quarantined" in preview["blockers"][0]
    response = support.post(f"/api/v1/gpus/{gpu.pk}/clear-quarantine/", {"preview_token": preview["token"]})
    assert_problem(response, 409)
    assert Gpu.objects.get(pk=gpu.pk).state == "free"


def test_gpu_scrub_through_the_api(support, tasks):
    gpu = make_server().gpus.first()
    token = support.post(f"/api/v1/gpus/{gpu.pk}/scrub/", {"dry_run": True}).json()["token"]
    op = support.post(f"/api/v1/gpus/{gpu.pk}/scrub/", {"preview_token": token}).json()
    assert op["kind"] == "gpu.scrub" and Gpu.objects.get(pk=gpu.pk).state == "scrubbing"


@pytest.mark.parametrize("body", [{}, {"dry_run": "maybe"}, {"preview_token": ["x"], "dry_run": False}, {"x": 1}])
def test_bad_action_bodies_are_400(support, tasks, body):
    server = make_server()
    assert_problem(support.post(f"/api/v1/servers/{server.pk}/cordon/", body), 400)


def test_unknown_target_is_404(support):
    assert_problem(support.post("/api/v1/servers/999/cordon/", {"dry_run": True}), 404)
