"""The simulated cluster lives in the fleet's process and is reached over the Kubernetes API, so a
worker that dies mid-lease loses nothing: the next one finds the pods, GpuLeases and VMs, and the
reconciler leaves running leases alone (before, the cluster lived in the worker's memory and the
next reconcile released leases whose VMs still ran)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fleet import cluster as cluster_access
from fleet.agents import agent_for
from fleet.reconciler import reconcile_fleet
from hardware import kube_constants as kc
from hardware.kube import KubernetesCluster
from hardware.types import VmState
from tenants import services
from tenants.reconciler import reconcile_leases
from tenants.states import LeaseState
from tests.tenants.conftest import SIM_ACTOR as ACTOR

pytestmark = pytest.mark.slow
IMAGE = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"


def _vm_state(lease):
    vm_id = kc.vm_id_for_pod(kc.tenant_namespace(lease.tenant.name), lease.pod_name)
    return agent_for(lease.server).sim_admin().get_vm(vm_id).state


def test_a_worker_killed_while_leases_boot_loses_nothing(sim, tasks):
    services.tenant_ensure(name="acme", actor=ACTOR)
    leases = [services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=n, actor=ACTOR) for n in (2, 1)]
    tasks.run(boots=False)  # the node watcher is down too
    for lease in leases:
        lease.refresh_from_db()
        assert lease.state == LeaseState.BOOTING

    cluster_access.set_cluster(None)  # the worker was killed: its cluster adapter and tasks went with it
    tasks.queued.clear()
    fresh = cluster_access.get_cluster()  # what the next worker builds from settings
    assert isinstance(fresh, KubernetesCluster)
    assert fresh.get_tenancy("acme").ready
    for held in leases:
        assert fresh.get_lease_pod(lease_id=str(held.pk), tenant="acme") is not None
        assert fresh.get_gpu_lease(str(held.pk)).gpu_module_ids == tuple(held.partition.module_ids)
        assert _vm_state(held) in (VmState.BOOTING, VmState.RUNNING)

    reconcile_leases(stuck_after=timedelta(0))  # finds the pods, resumes following the boots
    reconcile_fleet(stuck_after=timedelta(0))
    tasks.run()
    for held in leases:
        held.refresh_from_db()
        assert held.state == LeaseState.RUNNING, (held.state, held.failure_reason)
        assert fresh.get_lease_pod(lease_id=str(held.pk), tenant="acme").phase == "Running"
        assert _vm_state(held) is VmState.RUNNING
