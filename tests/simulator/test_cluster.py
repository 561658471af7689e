"""SimulatedCluster: the Cluster seam over simulated nodes (a small fake node, then a real SimFleet)."""

from __future__ import annotations

import pytest

from hardware import kube_constants as kc
from hardware.cluster import Cluster
from hardware.exceptions import ClusterError, FailedPrecondition, InvalidArgument
from hardware.types import VmState
from simulator.cluster import SimulatedCluster
from tests.support.fake_nodes import FakeNode


@pytest.fixture
def nodes():
    return {"n1": FakeNode("n1"), "n2": FakeNode("n2")}


@pytest.fixture
def cluster(nodes):
    return SimulatedCluster(nodes.__getitem__, node_names=nodes, module_of=lambda node, i: i + 1,
                            guest_ram_gib=32, poll_interval=0.01)


def _pod(cluster, lease_id="1", node="n1", gpus=(0, 1)):
    return cluster.create_lease_pod(lease_id=lease_id, tenant="acme", image="nvcr.io/nvidia/cuda:12.4",
                                    node=node, gpu_indexes=list(gpus))


def test_is_a_cluster(cluster):
    assert isinstance(cluster, Cluster)


def test_tenancy_namespace_and_policy(cluster):
    status = cluster.ensure_tenancy("acme")
    assert status.ready and status.namespace == "tenant-acme"
    assert cluster.ensure_tenancy("acme") == status
    assert cluster.namespaces["tenant-acme"][kc.TENANT_LABEL] == "acme"
    assert cluster.policies["tenant-acme"]["ingress"][0]["fromEndpoints"][0]["matchLabels"] == {
        "k8s:io.kubernetes.pod.namespace": "tenant-acme"}
    assert cluster.get_tenancy("other") is None
    with pytest.raises(InvalidArgument):
        cluster.ensure_tenancy("Not_Valid")


def test_pod_needs_its_tenancy_and_valid_arguments(cluster, nodes):
    with pytest.raises(ClusterError):
        _pod(cluster)
    cluster.ensure_tenancy("acme")
    with pytest.raises(InvalidArgument):
        cluster.create_lease_pod(lease_id="1", tenant="acme", image="Bad Image", node="n1", gpu_indexes=[0])
    with pytest.raises(ClusterError):
        _pod(cluster, node="n9")
    assert nodes["n1"].calls == []


def test_pod_follows_its_vm(cluster, nodes):
    cluster.ensure_tenancy("acme")
    created = _pod(cluster)
    assert (created.phase, created.reason, created.node) == ("Pending", "ContainerCreating", "n1")
    assert nodes["n1"].calls == [("start", "tenant-acme.lease-1", "lease-1", (1, 2), 32, 0.0)]
    assert _pod(cluster) == created  # adopting its own pod starts nothing new
    assert len(nodes["n1"].calls) == 1

    nodes["n1"].set("tenant-acme.lease-1", VmState.RUNNING)
    assert cluster.get_lease_pod(lease_id="1", tenant="acme").phase == "Running"
    nodes["n1"].set("tenant-acme.lease-1", VmState.SUCCEEDED)
    done = cluster.get_lease_pod(lease_id="1", tenant="acme")
    assert (done.phase, done.exit_code) == ("Succeeded", 0)


def test_failed_vm_and_refused_start(cluster, nodes):
    cluster.ensure_tenancy("acme")
    _pod(cluster, lease_id="1")
    nodes["n1"].set("tenant-acme.lease-1", VmState.FAILED, "CUDA error 802")
    failed = cluster.get_lease_pod(lease_id="1", tenant="acme")
    assert (failed.phase, failed.exit_code, failed.reason) == ("Failed", 1, "CUDA error 802")

    nodes["n2"].refuse = "GPU 1 is not bound to vfio-pci"
    refused = _pod(cluster, lease_id="2", node="n2")
    assert refused.phase == "Failed" and "vfio-pci" in refused.reason


def test_unreachable_node_keeps_the_pod_pending_until_it_returns(cluster, nodes):
    cluster.ensure_tenancy("acme")
    nodes["n1"].unreachable = True
    assert _pod(cluster).reason == "NodeUnreachable"
    nodes["n1"].unreachable = False
    assert cluster.get_lease_pod(lease_id="1", tenant="acme").reason == "ContainerCreating"


def test_watch_lists_then_follows_and_resumes(cluster, nodes):
    cluster.ensure_tenancy("acme")
    _pod(cluster)
    stream = cluster.watch_lease_pods(timeout=2)
    listed = next(stream)
    assert listed.phase == "Pending"
    nodes["n1"].set("tenant-acme.lease-1", VmState.RUNNING)
    running = next(stream)
    assert running.phase == "Running" and int(running.resource_version) > int(listed.resource_version)
    stream.close()

    nodes["n1"].set("tenant-acme.lease-1", VmState.SUCCEEDED)
    cluster.delete_lease_pod(lease_id="1", tenant="acme")
    resumed = list(cluster.watch_lease_pods(resource_version=running.resource_version, timeout=0.1))
    assert [(s.phase, s.exit_code) for s in resumed] == [("Succeeded", 0), ("Deleted", 0)]
    assert list(cluster.watch_lease_pods(resource_version=resumed[-1].resource_version, timeout=0.05)) == []


def test_cordon_holds_new_pods_and_uncordon_starts_them(cluster, nodes):
    cluster.ensure_tenancy("acme")
    cluster.cordon("n1")
    waiting = _pod(cluster)
    assert (waiting.phase, waiting.reason) == ("Pending", "Unschedulable")
    assert nodes["n1"].calls == []
    cluster.uncordon("n1")
    assert nodes["n1"].calls[0][0] == "start"
    assert cluster.get_lease_pod(lease_id="1", tenant="acme").reason == "ContainerCreating"


def test_drain_evicts_running_pods_and_reports_protected_ones(cluster, nodes):
    cluster.ensure_tenancy("acme")
    _pod(cluster, lease_id="1", gpus=[0])
    _pod(cluster, lease_id="2", gpus=[1])
    _pod(cluster, lease_id="3", node="n2", gpus=[0])
    cluster.protected_pods.add("tenant-acme/lease-2")

    report = cluster.drain("n1")

    assert "n1" in cluster.cordoned
    assert report.evicted == ("tenant-acme/lease-1",)
    assert [(r.pod, r.namespace) for r in report.refused] == [("lease-2", "tenant-acme")]
    assert ("stop", "tenant-acme.lease-1") in nodes["n1"].calls
    assert cluster.get_lease_pod(lease_id="1", tenant="acme") is None
    assert cluster.get_lease_pod(lease_id="3", tenant="acme").phase == "Pending"  # other node untouched


def test_gpu_lease_finalizer_only_after_levelling(cluster):
    lease = cluster.create_gpu_lease(lease_id="7", tenant="acme", node="n1", gpu_module_ids=[1],
                                     pci_addresses=["0000:18:00.0"], pod="lease-7")
    assert lease.phase == "Reserved" and not lease.finalized
    cluster.set_gpu_lease_phase("7", kc.GpuLeasePhase.SCRUBBING)
    cluster.delete_gpu_lease("7")
    assert cluster.get_gpu_lease("7").deleting
    with pytest.raises(FailedPrecondition):
        cluster.finalize_gpu_lease("7", levelled=False)
    assert cluster.get_gpu_lease("7") is not None
    cluster.finalize_gpu_lease("7", levelled=True)
    assert cluster.get_gpu_lease("7") is None


@pytest.fixture
def fleet():
    from simulator.fleet import SimFleet

    with SimFleet(1, insecure=True, accel=100_000.0) as running:
        yield running


def _prepare_gpu(fleet, module_id):
    """Bind the GPU to vfio-pci and activate its one-GPU partition, as the console would."""
    from hardware.agent_client import AgentClient

    [endpoint] = fleet.endpoints.values()
    agent = AgentClient(endpoint.address, insecure=True, node=endpoint.node)
    gpu = next(g for g in agent.get_inventory().gpus if g.module_id == module_id)
    agent.bind_vfio(gpu.pci.address)
    partition = next(p for p in agent.list_partitions() if p.gpu_module_ids == (module_id,))
    agent.activate_partition(partition.partition_id)


def test_pods_run_as_vms_on_a_simulated_fleet_over_sim_admin(fleet):
    from simulator.cluster import sim_admin_nodes

    [node] = fleet.endpoints
    _prepare_gpu(fleet, 1)
    _prepare_gpu(fleet, 2)
    cluster = SimulatedCluster.for_fleet(fleet, workload_seconds=3600, poll_interval=0.01)
    cluster.ensure_tenancy("acme")
    cluster.create_lease_pod(lease_id="1", tenant="acme", image="busybox", node=node, gpu_indexes=[1])

    phases = []
    for status in cluster.watch_lease_pods(timeout=10):
        phases.append(status.phase)
        if status.phase == "Succeeded":
            break
    assert phases[-1] == "Succeeded" and "Running" in phases

    forever = SimulatedCluster(sim_admin_nodes(fleet.endpoints), poll_interval=0.01)  # workload never ends
    forever.ensure_tenancy("acme")
    forever.create_lease_pod(lease_id="2", tenant="acme", image="busybox", node=node, gpu_indexes=[2])
    assert next(s for s in forever.watch_lease_pods(timeout=10) if s.phase == "Running")
    report = forever.drain(node)
    assert report.evicted == ("tenant-acme/lease-2",)
    vm = sim_admin_nodes(fleet.endpoints)(node).get_vm("tenant-acme.lease-2")
    assert vm.state is VmState.STOPPED
