"""The lease representation built from rows (tenants.lease_documents) fills exactly the documented shape
(LeaseSerializer, the OpenAPI component), for leases in every stage, in a fixed number of queries."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework import serializers

from console.audit import Actor
from tenants import services
from tenants.api.serializers import LeaseSerializer
from tenants.lease_documents import (
    LeaseRowsStatement,
    iso,
    lease_document,
    lease_documents,
    lease_page_rows,
    lease_rows,
)
from tenants.models import BootPhase, Lease
from tenants.states import LeaseState
from tests.api.conftest import seed_payload
from tests.factories import LeaseFactory, make_server

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def _shape(field):
    """The keys a serializer declares, nested serializers (and lists of them) included."""
    if isinstance(field, serializers.ListSerializer):
        return [_shape(field.child)]
    if isinstance(field, serializers.Serializer):
        return {name: _shape(f) for name, f in field.fields.items()}
    return None


def _mismatches(value, shape, path: str = "") -> list[str]:
    """Where `value` differs from the declared shape: keys missing or not declared, at any depth."""
    if isinstance(shape, list):
        return [m for i, item in enumerate(value) for m in _mismatches(item, shape[0], f"{path}[{i}]")]
    if isinstance(shape, dict) and value is not None:
        return ([f"{path}.{k} missing" for k in sorted(shape.keys() - value.keys())]
                + [f"{path}.{k} not declared" for k in sorted(value.keys() - shape.keys())]
                + [m for k in sorted(shape.keys() & value.keys())
                   for m in _mismatches(value[k], shape[k], f"{path}.{k}")])
    return []


def _booted(lease: Lease) -> Lease:
    """The lease moved to booting as the orchestrator does: phase rows with the move, one not started."""
    now = timezone.now()
    BootPhase.objects.create(lease=lease, seq=0, phase="firmware", predicted_seconds=5.0, started_at=now,
                             ended_at=now, duration_s=4.5, detail="ok")
    BootPhase.objects.create(lease=lease, seq=1, phase="kernel", predicted_seconds=9.0)
    Lease.objects.filter(pk=lease.pk).update(state=LeaseState.BOOTING, booting_at=now)
    return lease


def test_documents_fill_exactly_the_documented_shape_at_every_stage(landon, tasks):
    make_server()
    placed = landon.post("/api/v1/containers", seed_payload(gpus=2)).json()
    booted = _booted(Lease.objects.get(pk=landon.post("/api/v1/containers", seed_payload()).json()["id"]))
    pending = LeaseFactory(tenant=landon.tenant)
    failed = LeaseFactory(tenant=landon.tenant)
    services.lease_fail(lease=failed, actor=ACTOR, reason="ImagePullFailed: no such image")
    shape = _shape(LeaseSerializer())
    docs = {d["id"]: d for d in lease_documents(lease_rows(tenant=landon.tenant))}
    assert {pk: _mismatches(doc, shape) for pk, doc in docs.items()} == {pk: [] for pk in docs}
    assert _mismatches({**docs[placed["id"]], "server": {"id": 1}}, shape) == [
        ".server.hostname missing", ".server.platform missing", ".server.rack missing"]  # the check itself
    assert docs[placed["id"]]["gpu_devices"] and docs[placed["id"]]["server"]["hostname"]
    assert [g["module_id"] for g in docs[placed["id"]]["gpu_devices"]] == docs[placed["id"]]["partition"]["module_ids"]
    phases = docs[booted.pk]["boot_phases"]
    assert [p["phase"] for p in phases] == ["firmware", "kernel"]
    assert phases[0]["seconds"] == 4.5 and phases[0]["started_at"].endswith("Z") and phases[1]["started_at"] is None
    assert docs[pending.pk]["server"] is None and docs[pending.pk]["gpu_devices"] == []
    assert docs[failed.pk]["failure_reason"] == "ImagePullFailed" and docs[failed.pk]["terminal"] is True


def test_a_page_reads_three_queries_whatever_its_leases(landon, tasks):
    make_server()
    for n in (1, 2, 4):
        landon.post("/api/v1/containers", seed_payload(gpus=n))
    _booted(LeaseFactory(tenant=landon.tenant))
    pending = LeaseFactory(tenant=landon.tenant)
    with CaptureQueriesContext(connection) as queries:
        docs = lease_documents(lease_rows(tenant=landon.tenant))
    assert len(docs) == 5 and len(queries) == 3  # rows, GPUs of the placed, phases of the booted
    with CaptureQueriesContext(connection) as queries:
        lease_document(pending.pk)
    assert len(queries) == 1  # never placed, never booted: the row only
    placed = Lease.objects.filter(gpu_count=4).get()
    with CaptureQueriesContext(connection) as queries:
        document = lease_document(placed.pk)
    assert len(queries) == 1 and len(document["gpu_devices"]) == 4  # the lease with its GPUs, one row each


def test_a_caller_s_rows_never_carry_another_caller_s_filter(landon, callers, tasks):
    """The rows' query is resolved once per process and copied: a filter on one copy stays there."""
    mine = LeaseFactory(tenant=landon.tenant).pk
    theirs = LeaseFactory(tenant=callers["tenant_b"].tenant).pk
    assert [r["id"] for r in lease_rows(tenant=landon.tenant).filter(state="pending")] == [mine]
    assert [r["id"] for r in lease_rows(tenant=callers["tenant_b"].tenant)] == [theirs]
    assert [r["id"] for r in lease_rows(tenant_name=landon.tenant.name)] == [mine]
    assert sorted(r["id"] for r in lease_rows()) == sorted([mine, theirs])


def test_a_lease_of_another_tenant_is_not_found(landon, callers, tasks):
    lease = LeaseFactory(tenant=landon.tenant)
    with pytest.raises(Lease.DoesNotExist):
        lease_document(lease.pk, tenant=callers["tenant_b"].tenant)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/Los_Angeles"])
def test_times_are_written_as_drf_writes_them(zone):
    field = serializers.DateTimeField()
    value = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=UTC)
    with timezone.override(zone):
        assert iso(value) == field.to_representation(value)
    assert iso(None) is None


def test_one_lease_s_written_out_statement_reads_what_the_page_s_query_reads(landon, tasks):
    make_server()
    placed = landon.post("/api/v1/containers", seed_payload(gpus=4)).json()["id"]
    booted = _booted(Lease.objects.get(pk=landon.post("/api/v1/containers", seed_payload()).json()["id"])).pk
    pending = LeaseFactory(tenant=landon.tenant, command=["python", "-c"], env={"A": "1"}).pk
    for pk in (placed, booted, pending):
        page = lease_documents(lease_rows().filter(pk=pk))
        assert lease_document(pk) == lease_document(pk, tenant=landon.tenant) == page[0]


def test_the_list_s_written_out_statement_reads_what_the_orm_reads(landon, callers, tasks):
    """Every filter, order and slice the list and its cursor pagination use, against `lease_rows`."""
    make_server()
    for n in (1, 2, 4):
        landon.post("/api/v1/containers", seed_payload(gpus=n))
    _booted(LeaseFactory(tenant=landon.tenant))
    LeaseFactory(tenant=landon.tenant, command=["python", "-c"], env={"A": "1"})
    LeaseFactory(tenant=callers["tenant_b"].tenant)
    ids = sorted(Lease.objects.values_list("id", flat=True))
    middle = Lease.objects.get(pk=ids[3]).created_at
    Lease.objects.filter(pk__in=ids[:2]).update(created_at=middle - timedelta(hours=1))
    cases = [
        ({}, {}),
        ({"tenant": landon.tenant}, {}),
        ({"tenant_name": "other"}, {}),
        ({"tenant": landon.tenant}, {"state__in": ["pending", "booting"]}),
        ({"tenant": landon.tenant}, {"state__in": ["placed"]}),
        ({}, {"created_at__gte": middle}),
        ({}, {"created_at__lt": middle}),
        ({"tenant": landon.tenant}, {"id__lt": ids[4]}),
        ({"tenant": landon.tenant}, {"id__gt": ids[1]}),
    ]
    for scope, lookups in cases:
        for order in ("-id", "id"):
            for window in (slice(0, 3), slice(1, 4), slice(0, 100), slice(6, 9)):
                expected = list(lease_rows(**scope).filter(**lookups).order_by(order)[window])
                written = lease_page_rows(**scope).filter(**lookups).order_by(order)[window]
                assert written == expected, (scope, lookups, order, window)
    assert lease_documents(lease_page_rows(tenant=landon.tenant).order_by("-id")[0:20]) == lease_documents(
        lease_rows(tenant=landon.tenant).order_by("-id")[0:20])
    with CaptureQueriesContext(connection) as queries:
        lease_page_rows(tenant=landon.tenant).filter(id__lt=ids[-1]).order_by("-id")[0:21]
    assert len(queries) == 1


def test_the_written_out_statement_refuses_what_it_cannot_read():
    rows = LeaseRowsStatement()
    for bad in (lambda: rows.filter(image="x"), lambda: rows.order_by("created_at"), lambda: rows[0],
                lambda: rows[2:]):
        with pytest.raises(TypeError):
            bad()
