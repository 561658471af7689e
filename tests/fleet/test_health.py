"""GPU health from the agents into the fleet, acted on as the Xid catalog says (HARDWARE.md).

Events come from simulated agents over real gRPC on loopback: a fault is injected through SimAdmin
and read back from the agent's WatchHealth stream, then given to `gpu_record_health`; the watcher
tests run the long-running consumer's threads against the same simulated fleet.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from console.audit import Actor
from console.models import AuditEvent, Operation
from fleet.agents import agent_for, forget_agents
from fleet.health import ROW_REMAP_LIMIT, gpu_record_health
from fleet.models import Gpu, Server
from fleet.states import GpuState, ServerState
from hardware.types import HealthEvent, HealthKind
from simulator.fleet import SimFleet
from tests.support.simfleet import register, sim_fleet_with_cluster

G, S = GpuState, ServerState
ACTOR = Actor.system("health-test", source="agent")
TENANT_ACTOR = Actor.system("tenant-api", source="api")
IMAGE = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"
SENTINEL_MODULE, SENTINEL_C = 8, 31.25  # a temperature event that marks "everything before me arrived"


# ----------------------------------------------------------------------------- set-up
@pytest.fixture(scope="module")
def sim_fleet():
    """Two simulated HGX H100 servers on loopback for the whole module (rebooted after each test)."""
    fleet = SimFleet(2, platform="hgx-h100-8", variant="supermicro", insecure=True, accel=2000.0).start()
    yield fleet
    fleet.stop()


def _register(fleet: SimFleet, names=None) -> list[Server]:
    return register(fleet, actor=ACTOR, names=names)


@pytest.fixture
def fleet_servers(db, settings, tasks, sim_fleet):
    """The module's simulated servers registered from their GetInventory; hosts rebooted afterwards
    (lost GPUs come back, counters clear)."""
    settings.AGENT_INSECURE = True
    forget_agents()
    yield _register(sim_fleet)
    for server in Server.objects.all():
        agent_for(server).sim_admin().reboot_host()
    forget_agents()


@pytest.fixture
def own_fleet(transactional_db, settings, tasks):
    """A fresh simulated fleet (leases, threads) with a simulated cluster; stopped afterwards."""
    with sim_fleet_with_cluster(settings) as fleet:
        yield fleet


def _deliver(server: Server, inject) -> list[HealthEvent]:
    """Inject a fault through SimAdmin and feed what the agent's health stream reports to the service."""
    agent = agent_for(server)
    stream = agent.watch_health(timeout=10)  # subscribed when this returns
    events = []
    try:
        inject(agent.sim_admin())
        agent.sim_admin().inject_thermal(SENTINEL_MODULE, SENTINEL_C)
        for event in stream:
            if event.module_id == SENTINEL_MODULE and event.temperature_c == SENTINEL_C:
                break
            events.append(event)
            gpu_record_health(server=server, event=event, actor=ACTOR)
    finally:
        stream.cancel()
    return events


def _gpu(server: Server, module_id: int) -> Gpu:
    return Gpu.objects.get(server=server, module_id=module_id)


def _verbs(gpu: Gpu) -> list[str]:
    return list(AuditEvent.objects.filter(target_type="fleet.gpu", target_id=str(gpu.pk))
                .order_by("id").values_list("verb", flat=True))


# ----------------------------------------------------------------------------- the Xid table
XID_TABLE = [
    *((x, G.FREE, S.ACTIVE) for x in (13, 31, 43, 45, 68)),  # the tenant's application
    *((x, G.DRAINED, S.ACTIVE) for x in (48, 62, 64, 95, 109, 119, 120, 140)),  # reset-class
    (74, G.DRAINED, S.ACTIVE),  # NVLink
    (79, G.OFFLINE, S.DRAINED),  # fell off the bus: the idle server drains at once
    (63, G.FREE, S.ACTIVE),  # remap applies at the next reset (every lease's clean-up)
    (92, G.FREE, S.ACTIVE),  # watch
    (94, G.FREE, S.ACTIVE),  # restart the app
    (999, G.FREE, S.ACTIVE),  # not in the catalog: recorded, nothing else
]


@pytest.mark.parametrize(("xid", "gpu_state", "server_state"), XID_TABLE, ids=[f"xid{x[0]}" for x in XID_TABLE])
def test_xid_table(fleet_servers, tasks, xid, gpu_state, server_state):
    server = fleet_servers[0]
    _deliver(server, lambda admin: admin.inject_xid(3, xid))
    # A reset-class Xid on an idle GPU: scrubbed and levelled on its way to drained (this module's
    # fleet has no cluster: the node's cordon is left out).
    tasks.run(skip=("node_set_schedulable",))
    gpu = _gpu(server, 3)
    server.refresh_from_db()
    assert (gpu.state, server.state) == (gpu_state, server_state)
    assert gpu.last_xid == xid and gpu.last_xid_at is not None
    audit = AuditEvent.objects.get(verb="fleet.gpu.xid", target_id=str(gpu.pk))
    assert audit.source == "agent" and audit.after["xid"] == xid
    assert f"Xid {xid}:" in audit.message and "action:" in audit.message
    if xid == 999:
        assert "unknown Xid" in audit.message
    others = Gpu.objects.filter(server__in=fleet_servers).exclude(pk=gpu.pk)
    assert set(others.values_list("state", flat=True)) == {G.FREE}


def test_xid_audit_names_the_catalog_meaning_and_ecc_counts(fleet_servers, tasks):
    server = fleet_servers[0]
    _deliver(server, lambda admin: admin.inject_xid(2, 48))
    gpu = _gpu(server, 2)
    assert gpu.ecc_uncorrected == 1
    audit = AuditEvent.objects.get(verb="fleet.gpu.xid", target_id=str(gpu.pk))
    assert "double-bit ECC error" in audit.message and "drain_and_reset" in audit.message
    assert _verbs(gpu) == ["fleet.gpu.xid", "fleet.gpu.scrubbing"]
    assert gpu.drain_requested is True
    tasks.run()
    assert _verbs(gpu)[1:] == ["fleet.gpu.scrubbing", "fleet.gpu.leveling", "fleet.gpu.drained"]


def test_xid48_on_an_idle_gpu_is_scrubbed_and_levelled_before_it_can_be_free(fleet_servers, tasks):
    """A reset-class fault never leaves a GPU that an undrain could set free without a reset."""
    from console.errors import Conflict
    from fleet.services import gpu_drain, gpu_undrain

    server = fleet_servers[0]
    _deliver(server, lambda admin: admin.inject_xid(2, 48))
    tasks.run()
    gpu = _gpu(server, 2)
    assert gpu.state == G.DRAINED and gpu.scrubbed_at > gpu.last_xid_at and gpu.leveled_at >= gpu.scrubbed_at
    gpu_undrain(gpu=gpu, actor=ACTOR)
    assert _gpu(server, 2).state == G.FREE
    # A drained GPU that faulted after its last scrub: undrain refuses until it is scrubbed again.
    gpu5 = _gpu(server, 5)
    gpu_drain(gpu=gpu5, actor=ACTOR)
    _deliver(server, lambda admin: admin.inject_xid(5, 48))  # drained already: recorded, not scrubbed
    gpu5.refresh_from_db()
    assert gpu5.state == G.DRAINED
    with pytest.raises(Conflict, match="scrub it first"):
        gpu_undrain(gpu=gpu5, actor=ACTOR)


def test_repeated_events_change_nothing_more(fleet_servers, tasks):
    server = fleet_servers[0]
    drained = _deliver(server, lambda admin: admin.inject_xid(1, 48))
    tasks.run(skip=("node_set_schedulable",))
    lost = _deliver(server, lambda admin: admin.inject_xid(4, 79))
    assert [e.kind for e in lost] == [HealthKind.XID, HealthKind.GPU_LOST]
    for event in drained + lost:  # the agent reports them again (a re-subscribed stream)
        gpu_record_health(server=server, event=event, actor=ACTOR)
    tasks.run(skip=("node_set_schedulable",))
    assert _gpu(server, 1).state == G.DRAINED and _verbs(_gpu(server, 1)).count("fleet.gpu.drained") == 1
    assert _verbs(_gpu(server, 1)).count("fleet.gpu.scrubbing") == 1
    assert _gpu(server, 4).state == G.OFFLINE and _verbs(_gpu(server, 4)).count("fleet.gpu.offline") == 1
    assert Operation.objects.filter(kind="server.drain", target_id=str(server.pk)).count() == 1


def test_gpu_lost_records_a_reason_and_drains_the_server(fleet_servers):
    server = fleet_servers[1]
    _deliver(server, lambda admin: admin.inject_xid(5, 79))
    gpu = _gpu(server, 5)
    server.refresh_from_db()
    assert gpu.state == G.OFFLINE and "fell off the bus" in gpu.quarantine_reason
    assert server.state == S.DRAINED
    assert fleet_servers[0].state == S.ACTIVE


def test_repeated_row_remap_failure_is_an_rma_candidate(fleet_servers, tasks):
    server = fleet_servers[0]
    _deliver(server, lambda admin: admin.inject_xid(6, 64))
    tasks.run()
    assert _gpu(server, 6).state == G.DRAINED
    _deliver(server, lambda admin: admin.inject_xid(6, 64))
    gpu = _gpu(server, 6)
    assert gpu.state == G.QUARANTINED and "RMA candidate" in gpu.quarantine_reason


def test_too_many_row_remaps_quarantine(fleet_servers):
    server = fleet_servers[0]
    event = HealthEvent(hostname=server.hostname, module_id=7, kind=HealthKind.ROW_REMAP, at=datetime.now(UTC),
                        row_remaps=ROW_REMAP_LIMIT + 1, message="row remap pending")
    gpu = gpu_record_health(server=server, event=event, actor=ACTOR)
    assert gpu.row_remaps == ROW_REMAP_LIMIT + 1
    assert gpu.state == G.QUARANTINED and gpu.quarantine_reason.startswith("RMA candidate")


def test_temperature_updates_the_row_without_an_audit_event(fleet_servers, django_assert_max_num_queries):
    server = fleet_servers[0]
    before = AuditEvent.objects.count()
    _deliver(server, lambda admin: admin.inject_thermal(2, 71.5))
    gpu = _gpu(server, 2)
    assert gpu.temperature_c == 71.5 and gpu.state == G.FREE
    assert AuditEvent.objects.count() == before
    event = HealthEvent(hostname=server.hostname, module_id=2, kind=HealthKind.TEMPERATURE, at=datetime.now(UTC),
                        temperature_c=60.0)
    with django_assert_max_num_queries(4):  # find the GPU, one UPDATE, refresh (+ savepoint)
        gpu_record_health(server=server, event=event, actor=ACTOR)


@pytest.mark.parametrize(("celsius", "state"), [(89.0, G.FREE), (92.0, G.QUARANTINED), (97.0, G.QUARANTINED)])
def test_thermal_thresholds(fleet_servers, celsius, state):
    server = fleet_servers[0]
    _deliver(server, lambda admin: admin.inject_thermal(3, celsius))
    gpu = _gpu(server, 3)
    assert gpu.temperature_c == celsius and gpu.state == state
    if state == G.QUARANTINED:
        assert "thermal shutdown" in gpu.quarantine_reason


def test_unknown_module_is_ignored(fleet_servers):
    server = fleet_servers[0]
    before = AuditEvent.objects.count()
    event = HealthEvent(hostname=server.hostname, module_id=42, kind=HealthKind.XID, at=datetime.now(UTC), xid=48)
    assert gpu_record_health(server=server, event=event, actor=ACTOR) is None
    assert AuditEvent.objects.count() == before
    assert set(Gpu.objects.filter(server=server).values_list("last_xid", flat=True)) == {None}


# ----------------------------------------------------------------------------- with leases
def _running_lease(tasks, n: int):
    from tenants import services
    from tenants.states import LeaseState

    services.tenant_ensure(name="acme", actor=TENANT_ACTOR)
    lease = services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=n, actor=TENANT_ACTOR)
    tasks.run()
    lease.refresh_from_db()
    assert lease.state == LeaseState.RUNNING, (lease.state, lease.failure_reason)
    return lease


@pytest.mark.slow
def test_xid48_on_a_leased_gpu_drains_it_after_the_lease_is_cleaned(own_fleet, tasks):
    from tenants import services
    from tenants.states import LeaseState

    _register(own_fleet)
    lease = _running_lease(tasks, n=1)
    gpu = Gpu.objects.get(allocation_gpus__allocation=lease.allocation)
    _deliver(lease.server, lambda admin: admin.inject_xid(gpu.module_id, 48))
    gpu.refresh_from_db()
    assert gpu.state == G.DRAINING and gpu.drain_requested
    lease.allocation.refresh_from_db()
    assert lease.allocation.state == "faulted" and "Xid 48" in lease.allocation.fault_reason
    # The fault shows on the lease, and (the catalog: drain and reset) ends it; its GPU is cleaned.
    tasks.run()
    lease.refresh_from_db()
    gpu.refresh_from_db()
    [condition] = [c for c in lease.conditions if c["type"] == "GpuFault"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("GpuFault", "True", "Xid48")
    assert "Xid 48" in condition["message"] and str(gpu) in condition["message"]
    assert lease.state == LeaseState.FAILED and lease.failure_reason.startswith("GpuFault")
    assert gpu.state == G.DRAINED and not gpu.allocation_gpus.filter(held=True).exists()
    assert _verbs(gpu)[-4:] == ["fleet.gpu.scrubbing", "fleet.gpu.leveling", "fleet.gpu.leveled", "fleet.gpu.drained"]
    services.lease_release(lease=lease, actor=TENANT_ACTOR)  # a late delete changes nothing
    lease.refresh_from_db()
    assert lease.state == LeaseState.FAILED


@pytest.mark.slow
def test_xid79_takes_the_gpu_offline_and_drains_the_server(own_fleet, tasks):
    _register(own_fleet)
    lease = _running_lease(tasks, n=2)
    lost, kept = Gpu.objects.filter(allocation_gpus__allocation=lease.allocation).order_by("module_id")
    _deliver(lease.server, lambda admin: admin.inject_xid(lost.module_id, 79))
    lost.refresh_from_db()
    kept.refresh_from_db()
    server = Server.objects.get(pk=lease.server.pk)
    assert lost.state == G.OFFLINE and "Xid 79" in lost.quarantine_reason
    assert kept.state == G.IN_USE
    assert server.state == S.DRAINING  # a lease still holds a GPU there
    assert Operation.objects.get(kind="server.drain", target_id=str(server.pk)).status in Operation.UNFINISHED
    tasks.run()  # the fault ends the lease; the kept GPU is cleaned; the server is drained
    lease.refresh_from_db()
    kept.refresh_from_db()
    server.refresh_from_db()
    assert lease.state == "failed" and "GpuFault" in [c["type"] for c in lease.conditions]
    assert kept.state == G.FREE and server.state == S.DRAINED
