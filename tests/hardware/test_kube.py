"""KubernetesCluster over real HTTP through the official client, against tests/hardware/kube_mock.py."""

from __future__ import annotations

import pytest

from hardware import kube_constants as kc
from hardware.cluster import Cluster, PodPhase
from hardware.exceptions import ClusterConflict, ClusterUnavailable, FailedPrecondition, InvalidArgument
from hardware.kube import KubernetesCluster
from tests.hardware.kube_mock import KubeMock

IMAGE = "nvcr.io/nvidia/pytorch:24.01-py3"
CONTAINERS = [{"name": "workload", "image": "busybox"}]


@pytest.fixture
def mock():
    server = KubeMock().start()
    yield server
    server.stop()


@pytest.fixture
def cluster(mock):
    return KubernetesCluster(mock.api_client(), request_timeout=5)


def test_is_a_cluster(cluster):
    assert isinstance(cluster, Cluster)


def test_ensure_tenancy_creates_namespace_policy_and_ready_tenancy(mock, cluster):
    status = cluster.ensure_tenancy("landon")

    assert status.ready and status.namespace == "tenant-landon" and status.phase == "Ready"
    assert ("Ready", "True", "NamespaceAndPolicyReady") in status.conditions
    [ns] = mock.sent("POST", r"^/api/v1/namespaces$")
    assert ns.body == {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "tenant-landon",
        "labels": {"app.kubernetes.io/managed-by": "gpu-console", "gpuconsole.dev/tenant": "landon"}}}
    [policy] = mock.sent("POST", "/apis/cilium.io/v2/namespaces/tenant-landon/ciliumnetworkpolicies$")
    assert policy.body["metadata"]["name"] == "ingress-egress-rules"
    same_namespace = [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "tenant-landon"}}]
    assert policy.body["spec"] == {
        "endpointSelector": {},
        "ingress": [{"fromEndpoints": same_namespace}],
        "egress": [{"toEndpoints": same_namespace}],
    }
    [tenancy] = mock.sent("POST", "/apis/gpuconsole.dev/v1alpha1/tenancies$")
    assert tenancy.body["kind"] == "Tenancy" and tenancy.body["spec"] == {"tenant": "landon"}
    [ready] = mock.sent("PATCH", "/tenancies/landon/status$")
    assert ready.content_type == "application/merge-patch+json"
    stored = mock.get("/apis/gpuconsole.dev/v1alpha1/tenancies/landon")
    assert stored["status"]["phase"] == "Ready" and stored["status"]["namespace"] == "tenant-landon"


def test_ensure_tenancy_is_idempotent_and_adopts_existing_objects(mock, cluster):
    mock.put("/api/v1/namespaces", {"metadata": {"name": "tenant-acme", "labels": {"team": "x"}}})
    mock.put("/apis/cilium.io/v2/namespaces/tenant-acme/ciliumnetworkpolicies",
             {"metadata": {"name": "ingress-egress-rules"}, "spec": {"endpointSelector": {}}})

    first = cluster.ensure_tenancy("acme")
    second = cluster.ensure_tenancy("acme")

    assert first.ready and second.ready
    ns = mock.get("/api/v1/namespaces/tenant-acme")
    assert ns["metadata"]["labels"] == {"team": "x", "app.kubernetes.io/managed-by": "gpu-console",
                                        "gpuconsole.dev/tenant": "acme"}
    policy = mock.get("/apis/cilium.io/v2/namespaces/tenant-acme/ciliumnetworkpolicies/ingress-egress-rules")
    assert policy["spec"]["ingress"][0]["fromEndpoints"][0]["matchLabels"] == {
        "k8s:io.kubernetes.pod.namespace": "tenant-acme"}
    assert len(mock.sent("PATCH", "/tenancies/acme/status$")) == 1  # the second call changed nothing
    assert cluster.get_tenancy("acme") == second
    assert cluster.get_tenancy("nobody") is None


@pytest.mark.parametrize("name", ["Acme", "-acme", "acme_corp", "", "a" * 57, "acme.corp"])
def test_invalid_tenant_refused_before_any_request(mock, cluster, name):
    with pytest.raises(InvalidArgument):
        cluster.ensure_tenancy(name)
    assert mock.requests == []


def test_longest_tenant_name_fits_the_namespace(cluster):
    assert cluster.ensure_tenancy("a" * 56).namespace == "tenant-" + "a" * 56


def test_create_lease_pod_sends_the_exact_pod(mock, cluster):
    status = cluster.create_lease_pod(lease_id="42", tenant="landon", image=IMAGE, node="gpu-node-1",
                                      gpu_indexes=[6, 7], command=["python", "train.py"])

    assert status.name == "lease-42" and status.namespace == "tenant-landon" and status.lease_id == "42"
    assert status.phase == PodPhase.PENDING
    [sent] = mock.sent("POST", "/api/v1/namespaces/tenant-landon/pods$")
    assert sent.body == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "lease-42",
            "namespace": "tenant-landon",
            "labels": {"app.kubernetes.io/managed-by": "gpu-console", "gpuconsole.dev/tenant": "landon",
                       "gpuconsole.dev/lease": "42"},
            "annotations": {"gpuconsole.dev/gpulease": "lease-42", "gpuconsole.dev/gpu-indexes": "6,7",
                            "cdi.k8s.io/gpu-console_lease-42": "nvidia.com/gpu=6,nvidia.com/gpu=7"},
        },
        "spec": {
            "runtimeClassName": "kata-qemu-nvidia-gpu",
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-node-1"]}]}]}}},
            "containers": [{"name": "workload", "image": IMAGE, "command": ["python", "train.py"],
                            "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
        },
    }


def test_create_lease_pod_adopts_its_own_pod_and_refuses_a_stranger(mock, cluster):
    first = cluster.create_lease_pod(lease_id="7", tenant="t", image="busybox", node="n1", gpu_indexes=[0])
    again = cluster.create_lease_pod(lease_id="7", tenant="t", image="busybox", node="n1", gpu_indexes=[0])
    assert again.name == first.name

    mock.put("/api/v1/namespaces/tenant-t/pods", {"metadata": {"name": "lease-8", "labels": {}},
                                                  "spec": {"containers": CONTAINERS}})
    with pytest.raises(ClusterConflict):
        cluster.create_lease_pod(lease_id="8", tenant="t", image="busybox", node="n1", gpu_indexes=[0])


@pytest.mark.parametrize("kwargs", [
    {"image": "Not An Image"},
    {"image": "x@sha256:abc"},
    {"tenant": "Bad"},
    {"node": "Node_1"},
    {"lease_id": "Lease 1"},
    {"gpu_indexes": []},
    {"gpu_indexes": [1, 1]},
    {"gpu_indexes": [-1]},
])
def test_invalid_pod_request_refused_before_any_request(mock, cluster, kwargs):
    request = {"lease_id": "1", "tenant": "t", "image": "busybox:1.36", "node": "n1", "gpu_indexes": [0]}
    with pytest.raises(InvalidArgument):
        cluster.create_lease_pod(**{**request, **kwargs})
    assert mock.requests == []


def test_get_and_delete_lease_pod(mock, cluster):
    cluster.create_lease_pod(lease_id="5", tenant="t", image="busybox", node="n1", gpu_indexes=[3])
    mock.set_pod_phase("tenant-t", "lease-5", "Failed", exit_code=3)
    pod = cluster.get_lease_pod(lease_id="5", tenant="t")
    assert (pod.phase, pod.exit_code, pod.reason) == ("Failed", 3, "Error")

    cluster.delete_lease_pod(lease_id="5", tenant="t")
    cluster.delete_lease_pod(lease_id="5", tenant="t")  # already gone: fine
    assert cluster.get_lease_pod(lease_id="5", tenant="t") is None


def test_server_errors_and_unreachable_are_retryable(mock, cluster):
    mock.fail("POST", "/api/v1/namespaces$", 503)
    with pytest.raises(ClusterUnavailable) as caught:
        cluster.ensure_tenancy("acme")
    assert caught.value.retryable

    mock.fail("GET", "/tenancies/acme$", 500)
    with pytest.raises(ClusterUnavailable):
        cluster.get_tenancy("acme")


def test_timeout_is_retryable(mock):
    cluster = KubernetesCluster(mock.api_client(), request_timeout=0.3)
    mock.fail("GET", "/tenancies/slow$", 200, delay=1.5)
    with pytest.raises(ClusterUnavailable):
        cluster.get_tenancy("slow")


def test_unreachable_api_server_is_retryable():
    gone = KubeMock()
    api_client = gone.api_client()
    gone.server.server_close()  # nothing listens on that port any more
    with pytest.raises(ClusterUnavailable):
        KubernetesCluster(api_client, request_timeout=2).get_tenancy("acme")


def test_gpu_lease_lifecycle_and_finalizer_only_after_levelling(mock, cluster):
    lease = cluster.create_gpu_lease(lease_id="42", tenant="landon", node="gpu-node-1", gpu_module_ids=[7, 8],
                                     pci_addresses=["0000:18:00.0", "0000:2a:00.0"], pod="lease-42")
    [sent] = mock.sent("POST", "/apis/gpuconsole.dev/v1alpha1/gpuleases$")
    assert sent.body == {
        "apiVersion": "gpuconsole.dev/v1alpha1",
        "kind": "GpuLease",
        "metadata": {"name": "lease-42", "finalizers": ["gpuconsole.dev/scrub-and-level"],
                     "labels": {"app.kubernetes.io/managed-by": "gpu-console",
                                "gpuconsole.dev/tenant": "landon", "gpuconsole.dev/lease": "42"}},
        "spec": {"leaseId": "42", "tenant": "landon", "node": "gpu-node-1", "pod": "lease-42",
                 "gpuModuleIds": [7, 8], "pciAddresses": ["0000:18:00.0", "0000:2a:00.0"]},
    }
    assert lease.phase == "Reserved" and not lease.finalized
    assert cluster.create_gpu_lease(lease_id="42", tenant="landon", node="gpu-node-1", gpu_module_ids=[7, 8],
                                    pci_addresses=["0000:18:00.0", "0000:2a:00.0"], pod="lease-42") == lease

    assert cluster.set_gpu_lease_phase("42", kc.GpuLeasePhase.SCRUBBING).phase == "Scrubbing"
    cluster.delete_gpu_lease("42")
    assert cluster.get_gpu_lease("42").deleting  # held by our finalizer

    requests_before = len(mock.requests)
    with pytest.raises(FailedPrecondition):
        cluster.finalize_gpu_lease("42", levelled=False)
    assert len(mock.requests) == requests_before
    assert mock.get("/apis/gpuconsole.dev/v1alpha1/gpuleases/lease-42") is not None

    cluster.set_gpu_lease_phase("42", kc.GpuLeasePhase.LEVELLED)
    cluster.finalize_gpu_lease("42", levelled=True)
    [patch] = mock.sent("PATCH", "/gpuleases/lease-42$")
    assert patch.body["metadata"]["finalizers"] == []
    assert patch.body["metadata"]["resourceVersion"]
    assert mock.get("/apis/gpuconsole.dev/v1alpha1/gpuleases/lease-42") is None  # deleted once finalized
    assert cluster.finalize_gpu_lease("42", levelled=True) is None


def test_finalize_retries_a_conflict_by_rereading(mock, cluster):
    cluster.create_gpu_lease(lease_id="9", tenant="t", node="n1", gpu_module_ids=[1], pci_addresses=["a"],
                             pod="lease-9")
    mock.fail("PATCH", "/gpuleases/lease-9$", 409, times=2)

    status = cluster.finalize_gpu_lease("9", levelled=True)

    assert status.finalized
    assert len(mock.sent("GET", "/gpuleases/lease-9$")) == 3
    assert len(mock.sent("PATCH", "/gpuleases/lease-9$")) == 3


def test_finalize_gives_up_after_repeated_conflicts(mock, mock_retries=2):
    cluster = KubernetesCluster(mock.api_client(), conflict_retries=mock_retries)
    cluster.create_gpu_lease(lease_id="9", tenant="t", node="n1", gpu_module_ids=[1], pci_addresses=["a"],
                             pod="lease-9")
    mock.fail("PATCH", "/gpuleases/lease-9$", 409, times=5)
    with pytest.raises(ClusterConflict):
        cluster.finalize_gpu_lease("9", levelled=True)


def test_cordon_and_uncordon(mock, cluster):
    mock.put("/api/v1/nodes", {"metadata": {"name": "n1"}, "spec": {}})
    cluster.cordon("n1")
    assert mock.get("/api/v1/nodes/n1")["spec"]["unschedulable"] is True
    cluster.uncordon("n1")
    assert "unschedulable" not in mock.get("/api/v1/nodes/n1")["spec"]
    assert {r.content_type for r in mock.sent("PATCH", "/nodes/n1$")} == {"application/merge-patch+json"}


def test_drain_evicts_and_reports_pdb_refusal(mock, cluster):
    mock.put("/api/v1/nodes", {"metadata": {"name": "n1"}, "spec": {}})
    daemonset = {"ownerReferences": [{"kind": "DaemonSet", "name": "x", "apiVersion": "apps/v1", "uid": "u"}]}
    for name, extra in [("a", {}), ("b", {}), ("ds", daemonset)]:
        mock.put("/api/v1/namespaces/tenant-t/pods", {"metadata": {"name": name, **extra},
                                                      "spec": {"nodeName": "n1", "containers": CONTAINERS},
                                                      "status": {"phase": "Running"}})
    mock.put("/api/v1/namespaces/tenant-t/pods", {"metadata": {"name": "elsewhere"},
                                                  "spec": {"nodeName": "n2", "containers": CONTAINERS}})
    mock.pdb_blocks.add("b")

    report = cluster.drain("n1")

    assert mock.get("/api/v1/nodes/n1")["spec"]["unschedulable"] is True
    assert report.evicted == ("tenant-t/a",)
    assert [(r.pod, r.namespace) for r in report.refused] == [("b", "tenant-t")]
    assert "disruption budget" in report.refused[0].reason
    assert not report.complete
    [evict] = mock.sent("POST", "/pods/a/eviction$")
    assert evict.body == {"apiVersion": "policy/v1", "kind": "Eviction",
                          "metadata": {"name": "a", "namespace": "tenant-t"}}
    assert mock.get("/api/v1/namespaces/tenant-t/pods/b") is not None
    assert mock.get("/api/v1/namespaces/tenant-t/pods/ds") is not None
