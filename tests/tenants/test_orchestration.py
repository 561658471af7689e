"""A lease's whole life on the simulated fleet, over real gRPC to simulated agents and through the
simulated cluster's Kubernetes API: pending → placed → partitioning → booting → running → releasing → scrubbing →
leveling → released, with boot phases recorded and GPUs free only after scrub and level."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from console.audit import Actor
from console.models import AuditEvent
from fleet import cluster as cluster_access
from fleet.agents import agent_for
from fleet.models import Gpu
from fleet.states import GpuState
from hardware import kube_constants
from hardware.exceptions import ClusterUnavailable
from tenants import services
from tenants.models import BootPhase, Lease
from tenants.reconciler import reconcile_leases
from tenants.states import LeaseState, TenantState
from tests.support.boots import follow_boots_now

pytestmark = pytest.mark.slow
IMAGE = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"
ACTOR = Actor.system("tenant-api", source="api")


def _verbs(lease):
    return list(AuditEvent.objects.filter(target_type="tenants.lease", target_id=str(lease.pk))
                .order_by("id").values_list("verb", flat=True))


def _unschedulable(node: str) -> bool:
    """Whether the simulated cluster's Node is cordoned, as its API server stores it."""
    from simulator.kube_store import NODES
    from tests.support.simfleet import sim_kube

    return bool(sim_kube().store.get(NODES, "", node)["spec"].get("unschedulable"))


def _run_to_running(tasks, n=2, tenant="acme"):
    services.tenant_ensure(name=tenant, actor=ACTOR)
    lease = services.lease_request(tenant_name=tenant, image=IMAGE, gpu_count=n, actor=ACTOR)
    tasks.run()
    lease.refresh_from_db()
    return lease


def test_lease_runs_then_releases_through_scrub_and_level(sim, tasks):
    lease = _run_to_running(tasks)
    assert lease.tenant.state == TenantState.READY
    assert lease.state == LeaseState.RUNNING, (lease.state, lease.failure_reason)
    assert _verbs(lease) == [
        "tenants.lease.requested", "tenants.lease.placed", "tenants.lease.partitioning",
        "tenants.lease.booting", "tenants.lease.running",
    ]
    assert lease.allocation.state == "active" and lease.allocation.holder == f"lease/{lease.pk}"
    gpus = list(lease.gpus)
    assert {g.state for g in gpus} == {GpuState.IN_USE}
    assert sorted(g.module_id for g in gpus) == lease.partition.module_ids
    phases = list(BootPhase.objects.filter(lease=lease).order_by("seq"))
    assert len(phases) >= 5 and all(p.ended_at for p in phases)
    # Times are the console's wall clock (inside the boot, whatever the simulator's clock says);
    # durations are the host's own measure (simulated seconds here), beside the model's prediction.
    assert all(lease.booting_at <= p.started_at <= p.ended_at <= lease.running_at for p in phases)
    took = sum(p.duration_s for p in phases)
    predicted = sum(p.predicted_seconds for p in phases if p.predicted_seconds)
    assert took == pytest.approx(predicted, rel=0.2) and took > 60  # an old-kernel 2-GPU hot-plug boot, scattered
    reported = {p.partition_id: p.active for p in agent_for(lease.server).list_partitions()}
    assert reported[lease.partition.partition_id] is True

    cluster = cluster_access.get_cluster()
    assert cluster.get_gpu_lease(str(lease.pk)).gpu_module_ids == tuple(lease.partition.module_ids)
    assert cluster.get_lease_pod(lease_id=str(lease.pk), tenant="acme").phase == "Running"
    book = agent_for(lease.server).list_gpu_leases()
    assert [(b.lease_id, b.module_ids, b.phase) for b in book] == [
        (str(lease.pk), tuple(lease.partition.module_ids), "Running")]

    services.lease_release(lease=lease, actor=ACTOR)
    tasks.run()
    lease.refresh_from_db()
    assert lease.state == LeaseState.RELEASED
    assert cluster.get_lease_pod(lease_id=str(lease.pk), tenant="acme") is None
    assert cluster.get_gpu_lease(str(lease.pk)) is None  # finalizer removed only after levelling
    assert agent_for(lease.server).list_gpu_leases() == []
    assert _verbs(lease)[-4:] == [
        "tenants.lease.releasing", "tenants.lease.scrubbing", "tenants.lease.leveling", "tenants.lease.released",
    ]
    allocation_verbs = list(AuditEvent.objects.filter(target_type="fleet.allocation",
                                                      target_id=str(lease.allocation_id))
                            .order_by("id").values_list("verb", flat=True))
    assert allocation_verbs == ["fleet.allocation.reserved", "fleet.allocation.activating", "fleet.allocation.active",
                                "fleet.allocation.releasing", "fleet.allocation.cleaning", "fleet.allocation.returned"]
    # The lease's scrubbing/leveling states follow its GPUs: it was leveling only once every GPU was scrubbed.
    scrubbed = AuditEvent.objects.filter(target_type="fleet.gpu", verb="fleet.gpu.leveling",
                                         target_id__in=[str(g.pk) for g in gpus]).order_by("-id").first()
    leveling = AuditEvent.objects.get(target_type="tenants.lease", target_id=str(lease.pk),
                                      verb="tenants.lease.leveling")
    assert leveling.pk > scrubbed.pk
    for gpu in gpus:
        gpu.refresh_from_db()
        assert gpu.state == GpuState.FREE and not gpu.allocation_gpus.filter(held=True).exists()
        verbs = list(AuditEvent.objects.filter(target_type="fleet.gpu", target_id=str(gpu.pk))
                     .order_by("id").values_list("verb", flat=True))
        # Invariant 2: free again only after a scrub and a level.
        assert verbs[-4:] == ["fleet.gpu.scrubbing", "fleet.gpu.leveling", "fleet.gpu.leveled", "fleet.gpu.free"]
    reported = {p.partition_id: p.active for p in agent_for(lease.server).list_partitions()}
    assert reported[lease.partition.partition_id] is False
    assert all(reported[lease.server.platform_spec.single_partition(m).id] for m in lease.partition.module_ids)


def test_scrub_failure_quarantines_only_that_gpu(sim, tasks):
    lease = _run_to_running(tasks)
    bad = lease.gpus.first()
    agent_for(lease.server).sim_admin().fail_next_scrub(bad.module_id)
    services.lease_release(lease=lease, actor=ACTOR)
    tasks.run()
    lease.refresh_from_db()
    bad.refresh_from_db()
    assert lease.state == LeaseState.RELEASED
    assert bad.state == GpuState.QUARANTINED and "scrub" in bad.quarantine_reason
    others = Gpu.objects.filter(pk__in=[g.pk for g in lease.gpus.all()]).exclude(pk=bad.pk)
    assert {g.state for g in others} == {GpuState.FREE}


def test_firmware_a_tenant_flashed_is_levelled_back(sim, tasks):
    lease = _run_to_running(tasks, n=1)
    gpu = lease.gpus.get()
    agent = agent_for(lease.server)
    agent.sim_admin().flash_firmware(gpu.module_id, "96.00.74.00.01")
    assert agent.check_firmware(gpu.module_id).matches is False
    services.lease_release(lease=lease, actor=ACTOR)
    tasks.run()
    gpu.refresh_from_db()
    assert gpu.state == GpuState.FREE
    assert gpu.firmware_version == lease.server.platform_spec.pinned_firmware
    assert agent.check_firmware(gpu.module_id).matches is True


def test_running_a_task_twice_changes_nothing(sim, tasks):
    from console import dispatch

    lease = _run_to_running(tasks)
    events = AuditEvent.objects.count()
    for _ in range(2):
        dispatch.task("lease_advance").apply(args=(lease.pk,), throw=True)
        assert follow_boots_now() == 0  # a running lease's boot is over: nobody follows it
    assert AuditEvent.objects.count() == events
    services.lease_release(lease=lease, actor=ACTOR)
    tasks.run()
    events = AuditEvent.objects.count()
    dispatch.task("lease_advance").apply(args=(lease.pk,), throw=True)
    for gpu in lease.gpus.all():
        dispatch.task("gpu_clean").apply(args=(gpu.pk, None), throw=True)
    assert AuditEvent.objects.count() == events


def test_eight_gpu_lease_deactivates_idle_singles_first(sim, tasks, settings):
    settings.MAX_PREDICTED_BOOT_S = 3600  # the simulated hosts are the seeds' (an 8-GPU boot ≈ 29 min)
    lease = _run_to_running(tasks, n=8)
    assert lease.state == LeaseState.RUNNING
    reported = {p.partition_id: p.active for p in agent_for(lease.server).list_partitions()}
    assert reported[0] is True and not any(reported[pid] for pid in range(7, 15))
    assert Lease.objects.filter(state=LeaseState.RUNNING).count() == 1


class FlakyCluster:
    """The simulated cluster, but `ensure_tenancy` fails the first `failures` times (cluster 5xx)."""

    def __init__(self, inner, failures):
        self.inner, self.failures = inner, failures

    def ensure_tenancy(self, name):
        if self.failures:
            self.failures -= 1
            raise ClusterUnavailable("apiserver answered 503")
        return self.inner.ensure_tenancy(name)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_failed_onboarding_shows_its_reason_and_retries(sim, tasks):
    flaky = FlakyCluster(cluster_access.get_cluster(), failures=100)
    cluster_access.set_cluster(flaky)
    services.tenant_ensure(name="late", actor=ACTOR)
    lease = services.lease_request(tenant_name="late", image=IMAGE, gpu_count=1, actor=ACTOR)
    tasks.run()
    lease.refresh_from_db()
    assert lease.tenant.state == TenantState.FAILED
    assert "503" in lease.tenant.failure_reason
    assert lease.state == LeaseState.PENDING and "tenancy failed" in lease.pending_reason
    flaky.failures = 0
    reconcile_leases(stuck_after=timedelta(0))  # retries failed onboardings
    tasks.run()
    lease.refresh_from_db()
    assert lease.tenant.state == TenantState.READY
    assert lease.state == LeaseState.RUNNING


def test_agent_down_fails_the_lease_with_reason_and_quarantines(sim, tasks):
    tasks.enqueue("tenancy_provision", services.tenant_ensure(name="acme", actor=ACTOR).pk)
    tasks.run()
    lease = services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=4, actor=ACTOR)
    assert lease.state == LeaseState.PLACED
    queued = list(tasks.queued)
    tasks.queued.clear()
    for server in sim.servers:  # every agent goes away before the partition is activated
        server.stop(grace=0)
    tasks.queued.extend(queued)
    tasks.run()
    lease.refresh_from_db()
    assert lease.state == LeaseState.FAILED
    assert "AgentUnavailable" in lease.failure_reason
    gpus = lease.gpus
    assert gpus.count() == 4 and {g.state for g in gpus} == {GpuState.QUARANTINED}
    assert lease.allocation.state == "returned" and not lease.allocation.allocation_gpus.filter(held=True).exists()


def test_drain_cordons_the_node_keeps_the_running_lease_then_drains(sim, tasks):
    from fleet.models import Server
    from fleet.services import server_drain, server_uncordon

    lease = _run_to_running(tasks, n=1)
    server = Server.objects.get(pk=lease.server_id)
    op = server_drain(server=server, actor=ACTOR)
    tasks.run()
    assert _unschedulable(server.k8s_node_name)
    server.refresh_from_db()
    lease.refresh_from_db()
    assert server.state == "draining" and lease.state == LeaseState.RUNNING  # running leases continue
    other = services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=1, actor=ACTOR)
    assert other.server_id != server.pk  # nothing new on a draining server
    services.lease_release(lease=lease, actor=ACTOR)
    tasks.run()
    server.refresh_from_db()
    op.refresh_from_db()
    assert server.state == "drained" and op.status == "succeeded"
    server_uncordon(server=server, actor=ACTOR)
    tasks.run()
    assert not _unschedulable(server.k8s_node_name)


def test_a_replayed_boot_stream_records_each_phase_once(sim, tasks):
    """A re-opened WatchBoot replays the phases already passed (the node watcher re-opens dropped
    streams): each is recorded once, with its first times."""
    services.tenant_ensure(name="acme", actor=ACTOR)
    services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=1, actor=ACTOR)
    tasks.run(boots=False)
    lease = Lease.objects.get()
    assert lease.state == LeaseState.BOOTING
    vm_id = f"{lease.tenant.namespace}.{lease.pod_name}"
    events = list(agent_for(lease.server).watch_boot(vm_id))
    from tenants.orchestration import lease_record_boot_event

    for event in events[:3]:
        lease_record_boot_event(lease=lease, event=event, actor=ACTOR)
    first = {p.phase: (p.started_at, p.ended_at) for p in BootPhase.objects.filter(lease=lease) if p.started_at}
    for event in events:  # the stream again, from the start
        lease_record_boot_event(lease=lease, event=event, actor=ACTOR)
    lease.refresh_from_db()
    assert lease.state == LeaseState.RUNNING
    phases = BootPhase.objects.filter(lease=lease)
    assert len({p.phase for p in phases}) == phases.count()
    assert all((p.started_at, p.ended_at) == first[p.phase] for p in phases if p.phase in first)

def _release_in_simulated_seconds(sim, tasks, n: int) -> float:
    """Simulated seconds from a running n-GPU lease's release to `released`, its GPUs cleaned by a
    worker pool (every queued clean task at once, as the Celery worker's threads take them), at the
    simulator's default clock (60×) so real overheads weigh as little as in `make run`."""
    lease = _run_to_running(tasks, n=n)
    assert lease.state == LeaseState.RUNNING
    sim.clock.set_acceleration(60.0)
    try:
        start = sim.clock.seconds()
        services.lease_release(lease=lease, actor=ACTOR)
        tasks.run(parallel=("gpu_clean",))
        took = sim.clock.seconds() - start
    finally:
        sim.clock.set_acceleration(2000.0)
    lease.refresh_from_db()
    assert lease.state == LeaseState.RELEASED
    assert {g.state for g in lease.gpus} == {GpuState.FREE}
    return took


@pytest.mark.postgres
def test_an_eight_gpu_release_takes_at_most_one_and_a_half_one_gpu_releases(sim, tasks):
    """One clean task per GPU, in parallel: 8 GPUs are scrubbed and levelled side by side."""
    one = _release_in_simulated_seconds(sim, tasks, 1)
    eight = _release_in_simulated_seconds(sim, tasks, 8)
    print(f"release in simulated seconds: 1 GPU {one:.1f}, 8 GPUs {eight:.1f}, ratio {eight / one:.2f}")
    assert one > 30  # a scrub's steps alone take 33 simulated seconds
    assert eight <= 1.5 * one, (one, eight)
    # One clean task per GPU, each its own GPU's scrub then level.
    assert [n for n, _ in tasks.ran].count("gpu_clean") == 9


def test_one_correlation_id_follows_a_lease_through_every_task(sim, tasks):
    """The request's correlation id travels with every task it causes (message header), so the
    lease's whole life, GPUs and allocation included, is one query on the audit log."""
    from console import correlation

    with correlation.bound("req-0042"):
        services.tenant_ensure(name="acme", actor=ACTOR)
        lease = services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=2, actor=ACTOR)
    tasks.run()
    with correlation.bound("req-0043"):
        services.lease_release(lease=lease, actor=ACTOR)
    tasks.run()
    lease.refresh_from_db()
    assert lease.state == LeaseState.RELEASED
    first = AuditEvent.objects.filter(correlation_id="req-0042")
    assert {"tenants.lease.requested", "tenants.lease.placed", "fleet.allocation.reserved",
            "tenants.lease.booting", "tenants.lease.running", "fleet.partition.active"} <= set(
        first.values_list("verb", flat=True))
    second = set(AuditEvent.objects.filter(correlation_id="req-0043").values_list("verb", flat=True))
    assert {"tenants.lease.releasing", "fleet.allocation.cleaning", "fleet.gpu.scrubbing", "fleet.gpu.leveled",
            "fleet.gpu.free", "fleet.allocation.returned", "tenants.lease.released"} <= second


def test_a_vm_the_pod_delete_left_behind_is_torn_down_before_the_partition_goes(sim, tasks, monkeypatch):
    """The pod's delete 'succeeded' but its VM still runs: the release finds it on the node, tears it
    down (audited), then deactivates the partition and cleans the GPUs; nothing is quarantined."""
    lease = _run_to_running(tasks, n=2)
    cluster = cluster_access.get_cluster()
    monkeypatch.setattr(cluster, "delete_lease_pod", lambda **kw: None)  # a teardown that left the VM
    gpus = list(lease.gpus)
    assert agent_for(lease.server).gpu_holders(gpus[0].module_id)  # the VM holds them
    services.lease_release(lease=lease, actor=ACTOR)
    tasks.run()
    lease.refresh_from_db()
    assert lease.state == LeaseState.RELEASED
    assert {g.state for g in lease.gpus} == {GpuState.FREE}
    # One VM held both GPUs: torn down once, at the first GPU found held.
    [evicted] = AuditEvent.objects.filter(verb="fleet.gpu.leftover_vm_evicted")
    assert int(evicted.target_id) == gpus[0].pk and evicted.parent_type == "fleet.allocation"
    assert evicted.after["holders"][0]["vm_id"].endswith(lease.pod_name)
    assert not agent_for(lease.server).gpu_holders(gpus[0].module_id)


def test_an_operator_scrub_tears_down_a_stray_vm_instead_of_scrubbing_around_it(sim, tasks):
    from fleet.models import Server
    from fleet.services import gpu_scrub

    server = Server.objects.order_by("pk").first()
    gpu = server.gpus.get(module_id=5)
    # The stray VM's GPU is in no active partition, so it fails once booted (CUDA 802) and from then
    # holds nothing. At the fixture's 2000× its boot lasts 58 ms, less than a loaded machine can take
    # to reach the scrub's look at the holders (a run failed so); at 10× it lasts 11 s.
    fixture_acceleration = sim.clock.acceleration
    sim.clock.set_acceleration(10.0)
    try:
        agent_for(server).sim_admin().start_vm("stray.vm", pod_name="stray", gpu_module_ids=[5], guest_ram_gib=8)
        op = gpu_scrub(gpu=gpu, actor=ACTOR)
        tasks.run()
    finally:
        sim.clock.set_acceleration(fixture_acceleration)
    gpu.refresh_from_db()
    op.refresh_from_db()
    assert gpu.state == GpuState.FREE and op.status == "succeeded"
    event = AuditEvent.objects.get(verb="fleet.gpu.leftover_vm_evicted", target_id=str(gpu.pk))
    assert "stray.vm" in event.message


def test_boot_phases_carry_console_times_and_a_phase_that_never_ran_has_no_start(sim, tasks):
    from datetime import UTC, datetime

    from django.utils import timezone

    from hardware.types import BootPhaseEvent
    from tenants.orchestration import lease_record_boot_event

    services.tenant_ensure(name="acme", actor=ACTOR)
    services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=1, actor=ACTOR)
    tasks.run(boots=False)
    lease = Lease.objects.get()
    phases = list(BootPhase.objects.filter(lease=lease).order_by("seq"))
    assert phases and all(p.started_at is None and p.predicted_seconds for p in phases)  # predicted only
    # A host whose clock is an hour ahead (or a simulator running 60× fast): its times are not ours.
    ahead = datetime(2031, 1, 1, 12, 0, tzinfo=UTC)
    first = phases[0].phase
    lease_record_boot_event(lease=lease, event=BootPhaseEvent("vm", first, ahead, None), actor=ACTOR)
    lease_record_boot_event(lease=lease, event=BootPhaseEvent("vm", first, ahead, ahead.replace(minute=2)),
                            actor=ACTOR)
    started, *rest = BootPhase.objects.filter(lease=lease).order_by("seq")
    assert lease.booting_at <= started.started_at <= started.ended_at <= timezone.now()
    assert started.duration_s == 120.0
    assert all(p.started_at is None and p.ended_at is None for p in rest)


def test_the_pods_start_up_timeout_follows_the_prediction_with_a_margin(sim, tasks, settings):
    from simulator.kube_store import PODS
    from tests.support.simfleet import sim_kube

    settings.BOOT_TIMEOUT_FACTOR, settings.BOOT_TIMEOUT_EXTRA_S = 2, 30
    lease = _run_to_running(tasks, n=2)
    predicted = sum(p.predicted_seconds for p in BootPhase.objects.filter(lease=lease))
    pod = sim_kube().store.get(PODS, lease.tenant.namespace, lease.pod_name)
    annotations = pod["metadata"]["annotations"]
    assert int(annotations[kube_constants.KATA_CREATE_CONTAINER_TIMEOUT_ANNOTATION]) == math.ceil(predicted * 2 + 30)
    assert int(annotations[kube_constants.PREDICTED_BOOT_ANNOTATION]) == round(predicted)


def test_a_lease_predicted_to_boot_too_long_fails_with_the_reason_before_any_pod(sim, tasks, settings):
    # The seeds' host (5.15, hot-plug, systemd): an 8-GPU VM ≈ 29 min, over a 20 min maximum.
    settings.MAX_PREDICTED_BOOT_S = 20 * 60
    lease = _run_to_running(tasks, n=8)
    assert lease.state == LeaseState.FAILED
    assert lease.failure_reason.startswith("BootTooSlow: a 8-GPU VM on ")
    assert "over the maximum of 20.0 min" in lease.failure_reason and "slowest phase plug" in lease.failure_reason
    assert "host kernel 5.15.0-105-generic, hot-plug" in lease.failure_reason
    assert "tenants.lease.booting" not in _verbs(lease) and not BootPhase.objects.filter(lease=lease).exists()
    assert cluster_access.get_cluster().get_lease_pod(lease_id=str(lease.pk), tenant="acme") is None
    assert _run_to_running(tasks, n=2).state == LeaseState.RUNNING  # smaller VMs still start
