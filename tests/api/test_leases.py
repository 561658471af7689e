"""Leases: list (cursor pagination, filters, query counts), detail (ETag, ?wait=), DELETE, PendingTimeout."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from console.audit import Actor
from tenants import services
from tenants.models import Lease
from tenants.reconciler import reconcile_leases
from tenants.states import LeaseState
from tests.api.conftest import assert_problem, seed_payload
from tests.factories import LeaseFactory, make_server

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def _create(caller, **extra):
    response = caller.post("/api/v1/containers", seed_payload(**extra))
    assert response.status_code == 202, response.content
    return response.json()


def test_detail_shows_the_documented_shape(landon, tasks):
    make_server()
    lease = _create(landon, gpus=2)
    body = landon.get(f"/api/v1/leases/{lease['id']}").json()
    assert body["state"] in LeaseState.values and body["terminal"] is False
    assert set(body) >= {"id", "state", "conditions", "failure_reason", "server", "partition", "gpu_devices",
                         "boot_phases", "created_at", "placed_at", "running_at", "released_at", "failed_at", "links"}
    assert sorted(g["module_id"] for g in body["gpu_devices"]) == body["partition"]["module_ids"]


def test_other_tenants_lease_is_404_and_untouched(callers, tasks):
    lease = _create(callers["tenant_a"])
    other = callers["tenant_b"]
    assert_problem(other.get(f"/api/v1/leases/{lease['id']}"), 404)
    assert_problem(other.delete(f"/api/v1/leases/{lease['id']}"), 404)
    assert other.get("/api/v1/leases").json()["results"] == []
    assert Lease.objects.get(pk=lease["id"]).state == LeaseState.PENDING


def test_etag_and_if_none_match(landon, tasks):
    lease = _create(landon)
    first = landon.get(f"/api/v1/leases/{lease['id']}")
    etag = first["ETag"]
    assert etag and landon.get(f"/api/v1/leases/{lease['id']}", HTTP_IF_NONE_MATCH=etag).status_code == 304
    services.lease_release(lease=Lease.objects.get(pk=lease["id"]), actor=ACTOR)
    changed = landon.get(f"/api/v1/leases/{lease['id']}", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag and changed.json()["state"] == "released"


@pytest.mark.parametrize("wait", ["31", "-1", "x"])
def test_wait_out_of_range_is_a_400(landon, tasks, wait):
    lease = _create(landon)
    assert_problem(landon.get(f"/api/v1/leases/{lease['id']}", {"wait": wait}), 400, field="wait")


def test_wait_returns_after_the_timeout_when_nothing_changes(landon, tasks):
    lease = _create(landon)
    started = time.monotonic()
    response = landon.get(f"/api/v1/leases/{lease['id']}", {"wait": 1})
    assert response.status_code == 200 and 0.9 < time.monotonic() - started < 3


@pytest.mark.django_db(transaction=True)
def test_a_state_change_wakes_a_wait_within_one_second(callers, tasks):
    landon = callers["tenant_a"]
    lease = _create(landon, gpus=8)  # nothing fits: pending
    woke = []

    def change():
        time.sleep(0.5)
        services.lease_release(lease=Lease(pk=lease["id"]), actor=ACTOR)
        woke.append(time.monotonic())
        connection.close()

    thread = threading.Thread(target=change)
    thread.start()
    response = landon.get(f"/api/v1/leases/{lease['id']}", {"wait": 10})
    back = time.monotonic()
    thread.join()
    assert response.status_code == 200 and response.json()["state"] == "released"
    assert back - woke[0] < 1.0


def test_delete_is_202_idempotent_and_cancels_pending(landon, tasks):
    lease = _create(landon, gpus=8)
    for _ in range(3):
        response = landon.delete(f"/api/v1/leases/{lease['id']}")
        assert response.status_code == 202 and response.json()["state"] == "released"


def test_delete_of_a_placed_lease_releases_it(landon, tasks):
    make_server()
    lease = _create(landon)
    assert lease["state"] == "placed"
    response = landon.delete(f"/api/v1/leases/{lease['id']}")
    assert response.status_code == 202 and response.json()["state"] == "releasing"
    assert landon.delete(f"/api/v1/leases/{lease['id']}").status_code == 202


def test_max_pending_seconds_fails_with_pending_timeout(landon, tasks):
    lease = _create(landon, gpus=8, max_pending_seconds=5)
    Lease.objects.filter(pk=lease["id"]).update(created_at=timezone.now() - timedelta(seconds=6))
    patient = _create(landon, gpus=8, max_pending_seconds=600)
    assert reconcile_leases()["leases_timed_out"] == 1
    body = landon.get(f"/api/v1/leases/{lease['id']}").json()
    assert body["state"] == "failed" and body["failure_reason"] == "PendingTimeout" and body["terminal"]
    assert landon.get(f"/api/v1/leases/{patient['id']}").json()["state"] == "pending"


def test_list_filters_by_state_and_time(landon, tasks):
    make_server()
    placed = _create(landon)
    pending = _create(landon, gpus=8)
    ids = lambda r: [x["id"] for x in r.json()["results"]]  # noqa: E731
    assert ids(landon.get("/api/v1/leases", {"state": "pending"})) == [pending["id"]]
    assert ids(landon.get("/api/v1/leases", {"state": "pending,placed"})) == [pending["id"], placed["id"]]
    future = (timezone.now() + timedelta(hours=1)).isoformat()
    assert ids(landon.get("/api/v1/leases", {"created_after": future})) == []
    assert len(ids(landon.get("/api/v1/leases", {"created_before": future}))) == 2
    assert_problem(landon.get("/api/v1/leases", {"state": "bogus"}), 400, field="state")
    assert_problem(landon.get("/api/v1/leases", {"created_after": "yesterday"}), 400, field="created_after")
    assert_problem(landon.get("/api/v1/leases", {"page_size": 101}), 400, field="page_size")
    problem = assert_problem(landon.get("/api/v1/leases", {"cursor": "garbage"}), 400, field="cursor")
    assert problem["errors"][0]["code"] == "invalid_cursor"


def test_list_query_count_does_not_grow_with_rows(landon, tasks):
    make_server()
    make_server()

    def count():
        with CaptureQueriesContext(connection) as queries:
            response = landon.get("/api/v1/leases", {"page_size": 100})
        assert response.status_code == 200
        return len(queries), len(response.json()["results"])

    _create(landon)
    few = count()
    for n in (1, 2, 4, 1, 8):
        _create(landon, gpus=n)
    LeaseFactory.create_batch(10, tenant=landon.tenant)
    many = count()
    assert many[1] == 16 and few[0] == many[0], (few, many)


def test_paging_1000_leases_while_inserting_has_no_duplicate_and_no_gap(landon, tasks):
    LeaseFactory.create_batch(1000, tenant=landon.tenant)
    before = set(Lease.objects.values_list("pk", flat=True))
    seen, url, params = [], "/api/v1/leases", {"page_size": 100}
    while url:
        body = landon.get(url, params).json()
        seen.extend(x["id"] for x in body["results"])
        LeaseFactory.create_batch(7, tenant=landon.tenant)  # inserts between pages
        url, params = body["next"], None
    assert len(seen) == len(set(seen)) == 1000 and set(seen) == before
    assert seen == sorted(seen, reverse=True)


@pytest.mark.parametrize(("phase", "reason", "expected"), [
    ("Failed", "ErrImagePull", "ImagePullFailed: ErrImagePull"),
    ("Failed", "ImagePullBackOff", "ImagePullFailed: ImagePullBackOff"),
    ("Failed", "Error", ""),
    ("Succeeded", "Completed", ""),
])
def test_an_image_that_cannot_be_pulled_fails_the_lease(phase, reason, expected):
    from hardware.cluster import PodStatus
    from tenants.reconciler import pod_failure_reason
    from tenants.states import failure_code

    pod = PodStatus(name="p", namespace="tenant-x", node="n", phase=phase, reason=reason)
    assert pod_failure_reason(pod) == expected
    if expected:
        assert failure_code(expected) == "ImagePullFailed"


def test_failure_codes_of_known_texts():
    from tenants.states import failure_code

    assert failure_code("GpuFault: Xid 79 on gpu3") == "GpuFault"
    assert failure_code("VM boot failed: kernel panic") == "BootFailed"
    assert failure_code("AgentUnavailable: sim-1 did not answer") == "AgentUnavailable"
    assert failure_code("PendingTimeout: still pending") == "PendingTimeout"
    assert failure_code("something else") == "InternalError" and failure_code("") == ""


def test_link_paths_match_the_urlconf():
    from django.urls import reverse

    from tenants.lease_documents import LEASES_PATH, TENANCIES_PATH

    assert reverse("api-lease-detail", args=[7]) == f"{LEASES_PATH}/7"
    assert reverse("api-tenancy-detail", args=["x"]) == f"{TENANCIES_PATH}/x"
