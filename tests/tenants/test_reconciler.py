"""The reconciler repairs what lost tasks and crashed workers leave behind, as a singleton."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.models import AllocationGpu, Server
from fleet.reconciler import reconcile_fleet
from fleet.states import GpuState, ServerState
from tenants import services
from tenants.models import Lease
from tenants.reconciler import reconcile_leases
from tenants.states import LeaseState
from tests.tenants.conftest import SIM_ACTOR as ACTOR
from tests.tenants.conftest import lock_held_elsewhere

pytestmark = pytest.mark.slow
IMAGE = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"
NOW = timedelta(0)


def _reconcile(stuck_after):
    """Both reconcilers' passes, as beat runs them."""
    return {**reconcile_leases(stuck_after=stuck_after), **reconcile_fleet(stuck_after=stuck_after)}


def _running(tasks, n=1):
    services.tenant_ensure(name="acme", actor=ACTOR)
    lease = services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=n, actor=ACTOR)
    tasks.run()
    lease.refresh_from_db()
    assert lease.state == LeaseState.RUNNING
    return lease


def test_a_lost_task_is_resumed(sim, tasks):
    tasks.enqueue("tenancy_provision", services.tenant_ensure(name="acme", actor=ACTOR).pk)
    tasks.run()
    lease = services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=2, actor=ACTOR)
    assert lease.state == LeaseState.PLACED
    tasks.queued.clear()  # the worker died with the task
    _reconcile(stuck_after=NOW)
    tasks.run()
    lease.refresh_from_db()
    assert lease.state == LeaseState.RUNNING


def test_a_crash_during_clean_up_never_strands_the_gpus(sim, tasks):
    lease = _running(tasks, n=2)
    services.lease_release(lease=lease, actor=ACTOR)
    tasks.queued.clear()
    _reconcile(stuck_after=NOW)
    tasks.run()
    lease.refresh_from_db()
    assert lease.state == LeaseState.RELEASED
    assert set(lease.gpus.values_list("state", flat=True)) == {GpuState.FREE}
    assert lease.allocation.state == "returned"


def test_a_gpu_held_by_no_allocation_is_scrubbed_and_levelled_not_freed(sim, tasks):
    lease = _running(tasks)
    gpu = lease.gpus.get()
    # A half-written crash: the lease ended and its hold dropped, its pod and VM still run, its GPU
    # still marked in use.
    Lease.objects.filter(pk=lease.pk).update(state=LeaseState.FAILED, failed_at=timezone.now())
    AllocationGpu.objects.filter(gpu=gpu).update(held=False)
    _reconcile(stuck_after=NOW)
    tasks.run()
    gpu.refresh_from_db()
    assert gpu.state == GpuState.FREE and not gpu.allocation_gpus.filter(held=True).exists()
    assert gpu.scrubbed_at is not None and gpu.leveled_at is not None


def test_an_ended_pod_releases_its_lease(sim, tasks):
    from fleet import cluster as cluster_access

    lease = _running(tasks)
    cluster_access.get_cluster().delete_lease_pod(lease_id=str(lease.pk), tenant="acme")  # pod gone
    _reconcile(stuck_after=NOW)
    tasks.run()
    lease.refresh_from_db()
    assert lease.state == LeaseState.RELEASED


def test_unreachable_agent_marks_the_server_and_recovers(sim, tasks):
    server = Server.objects.order_by("pk").first()
    Server.objects.filter(pk=server.pk).update(agent_endpoint="127.0.0.1:9")  # nothing listens there
    from fleet.agents import forget_agents

    forget_agents()
    _reconcile(stuck_after=NOW)
    server.refresh_from_db()
    assert server.state == ServerState.UNREACHABLE
    endpoint = next(iter(sim.endpoints.values()))
    Server.objects.filter(pk=server.pk).update(agent_endpoint=endpoint.address)
    forget_agents()
    _reconcile(stuck_after=NOW)
    server.refresh_from_db()
    assert server.state == ServerState.ACTIVE


def test_fabric_manager_restart_gets_its_active_list_back(sim, tasks):
    from fleet.agents import agent_for

    lease = _running(tasks, n=4)
    agent = agent_for(lease.server)
    sim.clock.set_acceleration(1.0)  # keep the 60 s window open while the reconciler runs
    agent.sim_admin().restart_fabric_manager()
    stats = _reconcile(stuck_after=NOW)
    assert stats.get("fabric_managers_restored") == 1
    reported = {p.partition_id: p.active for p in agent.list_partitions()}
    assert reported[lease.partition.partition_id] is True


@pytest.mark.parametrize(("lock", "reconcile"), [("fleet-reconciler", reconcile_fleet),
                                                  ("tenants-reconciler", reconcile_leases)])
def test_only_one_reconciler_of_each_runs_at_a_time(sim, tasks, lock, reconcile):
    with lock_held_elsewhere(lock):
        assert reconcile(stuck_after=NOW) == {"skipped": 1}


def test_a_second_pass_changes_nothing(sim, tasks):
    from console.models import AuditEvent

    _running(tasks, n=2)
    _reconcile(stuck_after=NOW)
    tasks.run()
    events = AuditEvent.objects.count()
    _reconcile(stuck_after=timedelta(hours=1))
    tasks.run()
    assert AuditEvent.objects.count() == events


def test_a_ready_tenancy_whose_namespace_went_missing_is_reensured(sim, tasks):
    """Level-based: the tenancy is not treated as ready while its namespace is gone; it is provisioned
    again, and the tenant's next lease runs (before, every later lease failed 'namespace not found'
    and quarantined its GPUs)."""
    from console.models import AuditEvent
    from fleet import cluster as cluster_access
    from hardware import kube_constants as kc
    from tenants.models import Tenant
    from tenants.states import TenantState

    _running(tasks)
    cluster = cluster_access.get_cluster()
    cluster._core.delete_namespace(kc.tenant_namespace("acme"))
    assert cluster.tenancy_drift("acme") == ("namespace", "network policy")  # the policy went with it
    stats = _reconcile(stuck_after=timedelta(hours=1))
    assert stats["tenancies_reensured"] == 1
    tenant = Tenant.objects.get(name="acme")
    assert tenant.state == TenantState.PROVISIONING and "namespace, network policy missing" in tenant.failure_reason
    tasks.run()
    tenant.refresh_from_db()
    assert tenant.state == TenantState.READY and cluster.tenancy_drift("acme") == ()
    assert AuditEvent.objects.filter(verb="tenants.tenant.provisioning", message__contains="namespace").exists()
    later = _running(tasks)
    assert later.state == LeaseState.RUNNING
    assert _reconcile(stuck_after=timedelta(hours=1)).get("tenancies_reensured", 0) == 0
