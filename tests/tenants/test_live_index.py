"""The process's live placement index is a hint the database arbitrates: a stale view costs a retry,
never a double allocation; capacity freed here is seen at once; a request is one short transaction."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from django.db import connection, transaction

from console.audit import audit_batch
from console.models import AuditEvent
from fleet import placement_live
from fleet.allocations import allocation_claim
from fleet.models import Allocation, AllocationGpu, Gpu, Server
from fleet.placement_live import LivePlacementIndex, live_index
from fleet.snapshot import NoFit, Request
from fleet.states import GPU_MACHINE, SERVER_MACHINE, GpuState, ServerState
from tenants import services
from tenants.models import Lease
from tenants.states import LeaseState
from tests.factories import make_server
from tests.factories.fleet import TEST_ACTOR

IMAGE = "registry.example.com/team/job:1"


def _request(tenant, n):
    return services.lease_request(tenant_name=tenant.name, image=IMAGE, gpu_count=n, actor=TEST_ACTOR)


@pytest.mark.django_db
def test_a_stale_index_loses_the_claim_and_places_elsewhere(tasks, ready_tenant):
    a, b = make_server(), make_server()
    live_index.refresh()
    # Another process takes all of server a; this process's index has not seen it.
    Gpu.objects.filter(server=a).update(state=GpuState.RESERVED)
    lease = _request(ready_tenant, 8)
    assert lease.state == LeaseState.PLACED and lease.server_id == b.pk
    assert live_index.refusals == 1
    assert Lease.objects.count() == 1  # the lost attempt was rolled back whole
    assert not AuditEvent.objects.filter(target_type="tenants.lease").exclude(target_id=str(lease.pk)).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("read_took_s", "loads", "refusals"),
    [
        # One loss (on a) reads the whole fleet: b is not tried, and best fit's pull towards the fuller
        # servers does not send this process back into a or b while the other one is filling them.
        (0.01, 2, 1),
        # A read of the fleet that took 10 s is not repeated a minute later: only a is read again, so
        # b is tried and lost too.
        (10.0, 1, 2),
    ],
)
def test_a_lost_claim_shows_what_another_process_took_and_its_servers_are_avoided(
    tasks, ready_tenant, settings, read_took_s, loads, refusals
):
    settings.PLACEMENT_INDEX_MAX_AGE_S = 3600
    a, b, c = make_server(), make_server(), make_server()
    live_index.refresh()
    live_index._loaded_at -= 60  # the fleet was read a minute ago,
    live_index._load_s = read_took_s  # and reading it took this long
    # Another process is filling a and b; this process's index has seen neither.
    Gpu.objects.filter(server__in=[a, b], module_id=1).update(state=GpuState.RESERVED)
    lease = _request(ready_tenant, 1)
    assert lease.state == LeaseState.PLACED and lease.server_id == c.pk
    assert (live_index.loads, live_index.refusals) == (loads, refusals)


@pytest.mark.django_db
def test_a_read_of_one_server_never_overwrites_a_newer_read_of_the_fleet(tasks, ready_tenant, monkeypatch):
    a, b = make_server(), make_server()
    live_index.refresh()
    live_index._load_s = 10.0  # the fleet is slow to read: a lost claim reads only its server
    Gpu.objects.filter(server=a, module_id=1).update(state=GpuState.RESERVED)  # another process
    read_server = placement_live.placement_fleet

    def slow_read(server_ids=None):
        older = read_server(server_ids)
        if server_ids is not None:
            # While this thread read server a, more of it was taken and another thread read the
            # whole fleet: the older read of a must not be applied over that.
            Gpu.objects.filter(server=a, module_id__in=[2, 4]).update(state=GpuState.RESERVED)
            live_index.invalidate()
            live_index.refresh()
        return older

    monkeypatch.setattr(placement_live, "placement_fleet", slow_read)
    assert _request(ready_tenant, 1).server_id == b.pk
    assert live_index.refusals == 1
    assert live_index._index.free(live_index._vid(a.pk)) == 5


@pytest.mark.django_db
def test_capacity_freed_in_this_process_is_seen_without_rereading_on_refusal(tasks, ready_tenant, monkeypatch):
    monkeypatch.setattr(placement_live, "NOFIT_RELOAD_AFTER_S", 3600.0)  # only the change itself can tell
    server = make_server()
    GPU_MACHINE.transition_many(Gpu.objects.filter(server=server), GpuState.DRAINED, actor=TEST_ACTOR)
    assert _request(ready_tenant, 8).state == LeaseState.PENDING
    GPU_MACHINE.transition_many(Gpu.objects.filter(server=server), GpuState.FREE, actor=TEST_ACTOR)
    assert services.leases_place_pending(actor=TEST_ACTOR) == 1


@pytest.mark.django_db
def test_a_cordon_in_this_process_is_seen_at_once(tasks, ready_tenant):
    a, b = make_server(), make_server()
    live_index.refresh()
    SERVER_MACHINE.transition(a, ServerState.CORDONED, actor=TEST_ACTOR)
    assert _request(ready_tenant, 8).server_id == b.pk
    assert live_index.refusals == 0


class _Lost(Exception):
    pass


def _claim(server, gpu_ids):
    """allocation_claim as a request makes it: a refused claim rolls its attempt back."""
    try:
        with transaction.atomic():
            allocation = allocation_claim(server=server, partition_pk=server.partitions.get(partition_id=3).pk,
                                          gpu_ids=gpu_ids, holder="test/1", actor=TEST_ACTOR)
            if allocation is None:
                raise _Lost
            return list(Gpu.objects.filter(allocation_gpus__allocation=allocation).order_by("pk"))
    except _Lost:
        return None


@pytest.mark.django_db
def test_claim_is_all_or_nothing(ready_tenant):
    server = make_server()
    gpus = list(Gpu.objects.filter(server=server, module_id__in=(1, 3)).order_by("module_id"))
    GPU_MACHINE.transition(gpus[1], GpuState.QUARANTINED, actor=TEST_ACTOR)
    before = AuditEvent.objects.count()
    assert _claim(server, [g.pk for g in gpus]) is None
    assert Gpu.objects.get(pk=gpus[0].pk).state == GpuState.FREE
    assert AuditEvent.objects.count() == before
    assert not Allocation.objects.exists()


@pytest.mark.django_db
def test_claim_refuses_an_unschedulable_server(ready_tenant):
    server = make_server()
    SERVER_MACHINE.transition(server, ServerState.CORDONED, actor=TEST_ACTOR)
    gpu = Gpu.objects.get(server=server, module_id=1)
    assert _claim(server, [gpu.pk]) is None
    SERVER_MACHINE.transition(server, ServerState.ACTIVE, actor=TEST_ACTOR)
    claimed = _claim(server, [gpu.pk])
    assert [(g.pk, g.state) for g in claimed] == [(gpu.pk, GpuState.RESERVED)]
    assert AllocationGpu.objects.get(gpu=gpu, held=True).allocation.holder == "test/1"
    assert AuditEvent.objects.filter(verb="fleet.gpu.reserved", target_id=str(gpu.pk)).count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("held", ["a GPU (another reservation)", "the server (a cordon in progress)"])
def test_claim_never_waits_on_another_transaction(ready_tenant, held):
    server = make_server()
    ids = list(Gpu.objects.filter(server=server, module_id__in=(1, 3)).values_list("pk", flat=True))
    locked, release = threading.Event(), threading.Event()

    def other_reservation():
        with transaction.atomic():
            if held.startswith("a GPU"):
                list(Gpu.objects.select_for_update().filter(pk=ids[1]))
            else:
                list(Server.objects.select_for_update().filter(pk=server.pk))
            locked.set()
            release.wait(10)  # a claim that waited for this lock would get it only then, and fail below
        connection.close()

    holder = threading.Thread(target=other_reservation)
    holder.start()
    assert locked.wait(10)
    with transaction.atomic():  # does not wait for the other transaction: refused at once
        refused = _claim(server, ids)
    release.set()
    assert refused is None
    holder.join()
    assert set(Gpu.objects.filter(pk__in=ids).values_list("state", flat=True)) == {GpuState.FREE}
    with transaction.atomic():
        assert len(_claim(server, ids)) == 2


@pytest.mark.django_db
def test_a_placed_request_is_one_short_transaction(tasks, ready_tenant, django_assert_max_num_queries):
    make_server()
    live_index.refresh()
    _request(ready_tenant, 1)  # the first decision on a server also reads its partition rows, once
    # Tenant and quota, lease, allocation, claim, its GPU rows, lease placed, audit events, and the
    # test's savepoint pair (on PostgreSQL the audit table's trigger wakes the live relays: no
    # statement of its own); on SQLite the claim is three statements (no row locks to take in one).
    with django_assert_max_num_queries(9 if connection.vendor == "postgresql" else 11):
        lease = _request(ready_tenant, 2)
    assert lease.state == LeaseState.PLACED
    verbs = list(AuditEvent.objects.order_by("pk").values_list("verb", flat=True))
    assert verbs[-5:] == ["tenants.lease.requested", "fleet.gpu.reserved", "fleet.gpu.reserved",
                          "fleet.allocation.reserved", "tenants.lease.placed"]


@pytest.mark.django_db
def test_audit_batch_writes_at_the_end_and_drops_on_error(ready_tenant):
    from console.audit import audit_record

    before = AuditEvent.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic(), audit_batch():
        audit_record(actor=TEST_ACTOR, verb="tenants.tenant.touched", target=ready_tenant)
        raise RuntimeError("boom")
    assert AuditEvent.objects.count() == before
    with transaction.atomic(), audit_batch():
        with audit_batch():  # nested: joins the outer batch
            audit_record(actor=TEST_ACTOR, verb="tenants.tenant.touched", target=ready_tenant)
        assert AuditEvent.objects.count() == before  # not yet written
        audit_record(actor=TEST_ACTOR, verb="tenants.tenant.touched", target=ready_tenant)
    assert AuditEvent.objects.count() == before + 2


@pytest.mark.django_db
def test_one_push_per_group_per_transaction(tasks, ready_tenant, settings, django_capture_on_commit_callbacks):
    from asgiref.sync import async_to_sync
    from channels.layers import channel_layers, get_channel_layer

    from tests.console.test_realtime import _receive_all

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("tenants.leases", channel)
    make_server()
    with django_capture_on_commit_callbacks(execute=True):
        lease = _request(ready_tenant, 1)
    messages = _receive_all(layer, channel)
    channel_layers.backends.clear()
    assert len(messages) == 1
    assert [e["topic"] for e in messages[0]["events"]] == ["tenants.lease.requested", "tenants.lease.placed"]
    assert {e["payload"]["target_id"] for e in messages[0]["events"]} == {str(lease.pk)}


@pytest.mark.postgres
@pytest.mark.slow
def test_two_processes_indexes_never_double_allocate(transactional_db, tasks, monkeypatch):
    """32 clients over two placement indexes (as two worker processes would have): the indexes go
    stale against each other, claims are lost and retried, and still every GPU is in one lease."""
    from tenants.states import TenantState
    from tests.factories import TenantFactory
    from tests.tenants.test_concurrency import _assert_invariants, _run_clients

    for _ in range(4):
        make_server()
    indexes = [LivePlacementIndex(), LivePlacementIndex()]
    for index in indexes:
        index.salt = 0  # the same order on both: the worst case for conflicts
        index.refresh()
    mine = threading.local()

    class PerProcess:
        def __getattr__(self, name):
            return getattr(indexes[mine.process], name)

    monkeypatch.setattr(services, "live_index", PerProcess())
    tenants = [TenantFactory(state=TenantState.READY, gpu_quota=64) for _ in range(32)]
    sizes = [1, 2, 4, 1, 2, 1, 8, 1] * 4

    def client(i):
        mine.process = i % 2
        services.lease_request(tenant_name=tenants[i].name, image=IMAGE, gpu_count=sizes[i], actor=TEST_ACTOR)

    _run_clients(client)
    _assert_invariants()
    assert sum(index.refusals for index in indexes) > 0  # the stale path was taken
    held = sum(Lease.objects.filter(state=LeaseState.PLACED).values_list("gpu_count", flat=True))
    assert held == 32 - Gpu.objects.filter(state=GpuState.FREE).count()



# ----------------------------------------------------------------------------- looking by fingerprint
@pytest.mark.django_db
def test_fingerprints_read_in_the_database_are_those_of_the_servers_as_read_in_full(ready_tenant):
    from fleet.models import Partition
    from fleet.selectors import placement_fingerprints, snapshot_fingerprint
    from fleet.states import PartitionState

    a, b, c = make_server(), make_server(), make_server()
    Gpu.objects.filter(server=a, module_id__in=[1, 2]).update(state=GpuState.RESERVED)
    Gpu.objects.filter(server=a, module_id=3).update(state=GpuState.QUARANTINED)
    Gpu.objects.filter(server=b, module_id=8).update(isolated=False)  # free, but never placed
    Partition.objects.filter(server=b, partition_id__in=[1, 14]).update(state=PartitionState.ACTIVE)
    SERVER_MACHINE.transition(c, ServerState.CORDONED, actor=TEST_ACTOR)
    fingerprints = placement_fingerprints()
    read = {s.server_id: snapshot_fingerprint(s) for s in placement_live.placement_fleet().servers}
    assert fingerprints == read
    assert fingerprints[a.pk][1] == sum(1 << m for m in range(4, 9))
    assert fingerprints[b.pk][1] == sum(1 << m for m in range(1, 8))
    assert fingerprints[b.pk][2] == fingerprints[a.pk][2] | (1 << 1) | (1 << 14)  # besides the idle 1-GPU ones
    assert fingerprints[c.pk][0] == ServerState.CORDONED


@pytest.mark.django_db
def test_a_full_fleet_refuses_without_reading_it_again(tasks, ready_tenant, monkeypatch):
    """A full fleet used to be read whole for every refusal (each 50 ms per process); now only the
    fingerprints are, and nothing changed: no server is read again."""
    server = make_server()
    live_index.refresh()
    Gpu.objects.filter(server=server).update(state=GpuState.RESERVED)  # another process filled it
    assert _request(ready_tenant, 8).state == LeaseState.PENDING  # the look found the change
    reads = []
    read = placement_live.placement_fleet
    monkeypatch.setattr(placement_live, "placement_fleet", lambda ids=None: reads.append(ids) or read(ids))
    loads, syncs = live_index.loads, live_index.syncs
    for _ in range(3):  # a decision for another request each time (the tenant's next would queue)
        assert isinstance(live_index.choose(Request(gpu_count=1)), NoFit)
    assert (live_index.loads, live_index.syncs - syncs, reads) == (loads, 3, [])


@pytest.mark.django_db
def test_capacity_freed_by_another_process_is_found_by_reading_only_its_server(tasks, ready_tenant, monkeypatch):
    servers = [make_server() for _ in range(4)]
    Gpu.objects.update(state=GpuState.RESERVED)  # another process holds every GPU
    live_index.refresh()
    lease = _request(ready_tenant, 8)
    assert lease.state == LeaseState.PENDING
    Gpu.objects.filter(server=servers[2]).update(state=GpuState.FREE)  # and gives one server back
    reads = []
    read = placement_live.placement_fleet
    monkeypatch.setattr(placement_live, "placement_fleet", lambda ids=None: reads.append(ids) or read(ids))
    assert services.leases_place_pending(actor=TEST_ACTOR) == 1
    lease.refresh_from_db()
    assert lease.state == LeaseState.PLACED and lease.server_id == servers[2].pk
    assert reads == [[servers[2].pk]]


@pytest.mark.django_db
def test_an_old_view_is_brought_up_to_date_by_fingerprint_and_read_in_full_a_slice_at_a_time(
    tasks, ready_tenant, settings, monkeypatch
):
    settings.PLACEMENT_INDEX_MAX_AGE_S = 2.0
    monkeypatch.setattr(placement_live, "FULL_READ_SLICES", 2)
    a, b, c, d = (make_server() for _ in range(4))
    live_index.refresh()
    _request(ready_tenant, 1)  # this process's own claim (on a): its commit is in the fingerprint too
    Gpu.objects.filter(server=d, module_id=5).update(state=GpuState.RESERVED)  # another process's
    Gpu.objects.filter(server=c).update(temperature_c=91)  # no fingerprint shows it
    reads = []
    read = placement_live.placement_fleet
    monkeypatch.setattr(placement_live, "placement_fleet", lambda ids=None: reads.append(ids) or read(ids))
    loads = live_index.loads
    for _ in range(2):
        live_index._loaded_at -= 3  # older than PLACEMENT_INDEX_MAX_AGE_S: a periodic look
        assert isinstance(live_index.choose(Request(gpu_count=8)), placement_live.Decision)
    # The first look reads d (changed) and the first half in full, the second the other half.
    assert (live_index.loads, reads) == (loads, [[a.pk, b.pk, d.pk], [c.pk, d.pk]])
    assert live_index._index.server(live_index._vid(c.pk)).gpus[1].temperature_c == 91


@contextlib.contextmanager
def _a_look_held_in_its_read(monkeypatch):
    """A periodic look started on another thread, held inside its read of the database until the
    block ends; it then reads what the database showed when the block began (it touches no
    connection of its own)."""
    fingerprints, fleet = placement_live.placement_fingerprints(), placement_live.placement_fleet()
    reading, let_go = threading.Event(), threading.Event()

    def slow_fingerprints():
        reading.set()
        let_go.wait(10)
        return fingerprints

    monkeypatch.setattr(placement_live, "placement_fingerprints", slow_fingerprints)
    monkeypatch.setattr(placement_live, "placement_fleet", lambda ids=None: fleet)
    live_index._loaded_at -= 3  # older than PLACEMENT_INDEX_MAX_AGE_S
    looker = threading.Thread(target=live_index._look_if_due)
    looker.start()
    try:
        assert reading.wait(5)
        yield
    finally:
        let_go.set()
        looker.join(10)


@pytest.mark.django_db
def test_a_look_for_changes_does_not_hold_up_the_other_threads_decisions(tasks, ready_tenant, settings, monkeypatch):
    """A periodic look reads the database without the lock: a thread deciding meanwhile uses the view
    it has (the claim checks it) instead of waiting for the read (80 ms at 768 servers, bench/api.py)."""
    settings.PLACEMENT_INDEX_MAX_AGE_S = 2.0
    make_server()
    live_index.refresh()
    assert isinstance(live_index.choose(Request(gpu_count=1)), placement_live.Decision)
    syncs = live_index.syncs
    with _a_look_held_in_its_read(monkeypatch):
        started = time.monotonic()
        decision = live_index.choose(Request(gpu_count=1))  # no second look while one is under way
        took = time.monotonic() - started
    assert isinstance(decision, placement_live.Decision) and took < 1
    assert live_index.syncs == syncs + 1
    assert time.monotonic() - live_index._loaded_at < 1  # the look brought the view up to date


@pytest.mark.django_db
def test_a_look_that_read_before_a_commit_of_ours_leaves_that_server_as_committed(
    tasks, ready_tenant, settings, monkeypatch
):
    settings.PLACEMENT_INDEX_MAX_AGE_S = 2.0
    server = make_server()
    live_index.refresh()
    with _a_look_held_in_its_read(monkeypatch):  # it reads the server with 8 free GPUs
        decision = live_index.choose(Request(gpu_count=1))
        live_index._finish(decision.token)  # its transaction committed while the look was reading
    # The look's read is older than the commit: the server keeps what this process took.
    assert live_index._index.free(live_index._vid(server.pk)) == 7
