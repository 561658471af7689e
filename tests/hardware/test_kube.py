"""KubernetesCluster over real HTTP through the official client, against two API servers: the project's
Kubernetes API mock (tests/hardware/kube_mock.py) and the simulated cluster's API server
(simulator/kube_server.py, what `manage.py simfleet` serves). Tests that read what the adapter sent,
or script faults, run against the mock only (`mock_only`); every other test runs against both."""

from __future__ import annotations

import pytest
from kubernetes import client

from hardware import kube_constants as kc
from hardware.cluster import Cluster, PodPhase
from hardware.exceptions import ClusterConflict, ClusterUnavailable, FailedPrecondition, InvalidArgument
from hardware.kube import KubernetesCluster
from tests.hardware.kube_backends import BACKENDS
from tests.hardware.kube_mock import KubeMock

IMAGE = "nvcr.io/nvidia/pytorch:24.01-py3"
CONTAINERS = [{"name": "workload", "image": "busybox"}]
mock_only = pytest.mark.parametrize("backend", ["mock"], indirect=True)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    server = BACKENDS[request.param]()
    yield server
    server.stop()


@pytest.fixture
def mock(backend):
    assert backend.name == "mock", "mark the test mock_only"
    return backend.server


@pytest.fixture
def cluster(backend):
    return KubernetesCluster(backend.api_client(), request_timeout=5)


def test_is_a_cluster(cluster):
    assert isinstance(cluster, Cluster)


@mock_only
def test_ensure_tenancy_sends_namespace_policy_and_tenancy(mock, cluster):
    cluster.ensure_tenancy("landon")

    [ns] = mock.sent("POST", r"^/api/v1/namespaces$")
    assert ns.body == {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "tenant-landon",
        "labels": {"app.kubernetes.io/managed-by": "gpu-console", "gpuconsole.dev/tenant": "landon"}}}
    [policy] = mock.sent("POST", "/apis/cilium.io/v2/namespaces/tenant-landon/ciliumnetworkpolicies$")
    assert policy.body["metadata"]["name"] == "ingress-egress-rules"
    [tenancy] = mock.sent("POST", "/apis/gpuconsole.dev/v1alpha1/tenancies$")
    assert tenancy.body["kind"] == "Tenancy" and tenancy.body["spec"] == {"tenant": "landon"}
    [ready] = mock.sent("PATCH", "/tenancies/landon/status$")
    assert ready.content_type == "application/merge-patch+json"


def test_ensure_tenancy_creates_namespace_policy_and_ready_tenancy(backend, cluster):
    status = cluster.ensure_tenancy("landon")

    assert status.ready and status.namespace == "tenant-landon" and status.phase == "Ready"
    assert ("Ready", "True", "NamespaceAndPolicyReady") in status.conditions
    ns = backend.get("/api/v1/namespaces/tenant-landon")
    assert ns["kind"] == "Namespace" and ns["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "gpu-console", "gpuconsole.dev/tenant": "landon"}
    policy = backend.get("/apis/cilium.io/v2/namespaces/tenant-landon/ciliumnetworkpolicies/ingress-egress-rules")
    same_namespace = [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "tenant-landon"}}]
    assert policy["spec"] == {
        "endpointSelector": {},
        "ingress": [{"fromEndpoints": same_namespace}],
        "egress": [{"toEndpoints": same_namespace}],
    }
    stored = backend.get("/apis/gpuconsole.dev/v1alpha1/tenancies/landon")
    assert stored["kind"] == "Tenancy" and stored["spec"] == {"tenant": "landon"}
    assert stored["status"]["phase"] == "Ready" and stored["status"]["namespace"] == "tenant-landon"
    assert stored["metadata"]["uid"] and stored["metadata"]["resourceVersion"]
    assert cluster.get_tenancy("landon") == status


def test_tenancy_drift_names_what_went_missing(backend, cluster):
    assert cluster.tenancy_drift("landon") == ("tenancy", "namespace", "network policy")
    cluster.ensure_tenancy("landon")
    assert cluster.tenancy_drift("landon") == ()
    client.CustomObjectsApi(backend.api_client()).delete_namespaced_custom_object(
        "cilium.io", "v2", "tenant-landon", "ciliumnetworkpolicies", "ingress-egress-rules")
    assert cluster.tenancy_drift("landon") == ("network policy",)
    cluster.ensure_tenancy("landon")
    assert cluster.tenancy_drift("landon") == ()


def test_ensure_tenancy_is_idempotent_and_adopts_existing_objects(backend, cluster):
    backend.seed_namespace("tenant-acme", {"team": "x"})
    backend.seed_custom("cilium.io", "v2", "tenant-acme", "ciliumnetworkpolicies", {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "ingress-egress-rules"}, "spec": {"endpointSelector": {}}})

    first = cluster.ensure_tenancy("acme")
    version = backend.get("/apis/gpuconsole.dev/v1alpha1/tenancies/acme")["metadata"]["resourceVersion"]
    second = cluster.ensure_tenancy("acme")

    assert first.ready and second.ready
    ns = backend.get("/api/v1/namespaces/tenant-acme")
    assert ns["metadata"]["labels"] == {"team": "x", "app.kubernetes.io/managed-by": "gpu-console",
                                        "gpuconsole.dev/tenant": "acme"}
    policy = backend.get("/apis/cilium.io/v2/namespaces/tenant-acme/ciliumnetworkpolicies/ingress-egress-rules")
    assert policy["spec"]["ingress"][0]["fromEndpoints"][0]["matchLabels"] == {
        "k8s:io.kubernetes.pod.namespace": "tenant-acme"}
    # the second call changed nothing
    assert backend.get("/apis/gpuconsole.dev/v1alpha1/tenancies/acme")["metadata"]["resourceVersion"] == version
    assert cluster.get_tenancy("acme") == second
    assert cluster.get_tenancy("nobody") is None


@pytest.mark.parametrize("name", ["Acme", "-acme", "acme_corp", "", "a" * 57, "acme.corp"])
def test_invalid_tenant_refused_before_any_request(backend, cluster, name):
    before = backend.requests
    with pytest.raises(InvalidArgument):
        cluster.ensure_tenancy(name)
    assert backend.requests == before


def test_longest_tenant_name_fits_the_namespace(cluster):
    assert cluster.ensure_tenancy("a" * 56).namespace == "tenant-" + "a" * 56


@mock_only
def test_create_lease_pod_carries_the_containers_environment(mock, cluster):
    cluster.create_lease_pod(lease_id="43", tenant="landon", image=IMAGE, node="gpu-node-1", gpu_indexes=[1],
                             env={"B": "2", "A": "1"})
    [sent] = mock.sent("POST", "/api/v1/namespaces/tenant-landon/pods$")
    assert sent.body["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]


@mock_only
def test_create_lease_pod_sends_the_exact_pod(mock, cluster):
    status = cluster.create_lease_pod(lease_id="42", tenant="landon", image=IMAGE, node="gpu-node-1",
                                      gpu_indexes=[6, 7], command=["python", "train.py"],
                                      startup_timeout_s=540, predicted_boot_s=280.4)

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
                            "cdi.k8s.io/gpu-console_lease-42": "nvidia.com/gpu=6,nvidia.com/gpu=7",
                            # Kata's per-pod create-container timeout, from the boot prediction
                            "io.katacontainers.config.runtime.create_container_timeout": "540",
                            "gpuconsole.dev/predicted-boot-seconds": "280"},
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


def test_create_lease_pod_adopts_its_own_pod_and_refuses_a_stranger(backend, cluster):
    cluster.ensure_tenancy("t")
    first = cluster.create_lease_pod(lease_id="7", tenant="t", image="busybox", node="n1", gpu_indexes=[0])
    assert first.phase == PodPhase.PENDING and first.lease_id == "7"
    again = cluster.create_lease_pod(lease_id="7", tenant="t", image="busybox", node="n1", gpu_indexes=[0])
    assert again.name == first.name

    backend.seed_pod("tenant-t", {"metadata": {"name": "lease-8", "labels": {}}, "spec": {"containers": CONTAINERS}})
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
def test_invalid_pod_request_refused_before_any_request(backend, cluster, kwargs):
    request = {"lease_id": "1", "tenant": "t", "image": "busybox:1.36", "node": "n1", "gpu_indexes": [0]}
    before = backend.requests
    with pytest.raises(InvalidArgument):
        cluster.create_lease_pod(**{**request, **kwargs})
    assert backend.requests == before


def test_get_and_delete_lease_pod(backend, cluster):
    cluster.ensure_tenancy("t")
    cluster.create_lease_pod(lease_id="5", tenant="t", image="busybox", node="n1", gpu_indexes=[3])
    backend.set_pod_phase("tenant-t", "lease-5", "Failed")
    pod = cluster.get_lease_pod(lease_id="5", tenant="t")
    assert (pod.phase, pod.exit_code, pod.reason) == ("Failed", 1, "Error")

    cluster.delete_lease_pod(lease_id="5", tenant="t")
    cluster.delete_lease_pod(lease_id="5", tenant="t")  # already gone: fine
    assert cluster.get_lease_pod(lease_id="5", tenant="t") is None


@mock_only
def test_server_errors_and_unreachable_are_retryable(mock, cluster):
    mock.fail("POST", "/api/v1/namespaces$", 503)
    with pytest.raises(ClusterUnavailable) as caught:
        cluster.ensure_tenancy("acme")
    assert caught.value.retryable

    mock.fail("GET", "/tenancies/acme$", 500)
    with pytest.raises(ClusterUnavailable):
        cluster.get_tenancy("acme")


@mock_only
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


@mock_only
def test_gpu_lease_sent_with_our_finalizer(mock, cluster):
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

    requests_before = len(mock.requests)
    with pytest.raises(FailedPrecondition):
        cluster.finalize_gpu_lease("42", levelled=False)
    assert len(mock.requests) == requests_before
    cluster.finalize_gpu_lease("42", levelled=True)
    [patch] = mock.sent("PATCH", "/gpuleases/lease-42$")
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body["metadata"]["finalizers"] == []
    assert patch.body["metadata"]["resourceVersion"]  # guarded: a concurrent change makes it a 409


@mock_only
def test_finalize_retries_a_conflict_by_rereading(mock, cluster):
    cluster.create_gpu_lease(lease_id="9", tenant="t", node="n1", gpu_module_ids=[1], pci_addresses=["a"],
                             pod="lease-9")
    mock.fail("PATCH", "/gpuleases/lease-9$", 409, times=2)

    status = cluster.finalize_gpu_lease("9", levelled=True)

    assert status.finalized
    assert len(mock.sent("GET", "/gpuleases/lease-9$")) == 3
    assert len(mock.sent("PATCH", "/gpuleases/lease-9$")) == 3


@mock_only
def test_finalize_gives_up_after_repeated_conflicts(mock, mock_retries=2):
    cluster = KubernetesCluster(mock.api_client(), conflict_retries=mock_retries)
    cluster.create_gpu_lease(lease_id="9", tenant="t", node="n1", gpu_module_ids=[1], pci_addresses=["a"],
                             pod="lease-9")
    mock.fail("PATCH", "/gpuleases/lease-9$", 409, times=5)
    with pytest.raises(ClusterConflict):
        cluster.finalize_gpu_lease("9", levelled=True)


def test_cordon_and_uncordon(backend, cluster):
    cluster.cordon("n1")
    assert backend.get("/api/v1/nodes/n1")["spec"]["unschedulable"] is True
    cluster.uncordon("n1")
    assert "unschedulable" not in backend.get("/api/v1/nodes/n1")["spec"]


@mock_only
def test_cordon_sends_merge_patches(mock, cluster):
    cluster.cordon("n1")
    cluster.uncordon("n1")
    assert {r.content_type for r in mock.sent("PATCH", "/nodes/n1$")} == {"application/merge-patch+json"}


def test_drain_evicts_and_reports_pdb_refusal(backend, cluster):
    backend.seed_namespace("tenant-t")
    daemonset = {"ownerReferences": [{"kind": "DaemonSet", "name": "x", "apiVersion": "apps/v1", "uid": "u"}]}
    for name, extra in [("a", {}), ("b", {}), ("ds", daemonset)]:
        backend.seed_pod("tenant-t", {"metadata": {"name": name, **extra},
                                      "spec": {"nodeName": "n1", "containers": CONTAINERS}})
    backend.seed_pod("tenant-t", {"metadata": {"name": "elsewhere"},
                                  "spec": {"nodeName": "n2", "containers": CONTAINERS}})
    backend.protect("tenant-t", "b")

    report = cluster.drain("n1")

    assert backend.get("/api/v1/nodes/n1")["spec"]["unschedulable"] is True
    assert report.evicted == ("tenant-t/a",)
    assert [(r.pod, r.namespace) for r in report.refused] == [("b", "tenant-t")]
    assert "disruption budget" in report.refused[0].reason
    assert not report.complete
    assert backend.get("/api/v1/namespaces/tenant-t/pods/a") is None
    assert backend.get("/api/v1/namespaces/tenant-t/pods/b") is not None
    assert backend.get("/api/v1/namespaces/tenant-t/pods/ds") is not None
    assert backend.get("/api/v1/namespaces/tenant-t/pods/elsewhere") is not None


@mock_only
def test_drain_sends_policy_v1_evictions(mock, cluster):
    mock.put("/api/v1/namespaces/tenant-t/pods", {"metadata": {"name": "a"},
                                                  "spec": {"nodeName": "n1", "containers": CONTAINERS}})
    cluster.drain("n1")
    [evict] = mock.sent("POST", "/pods/a/eviction$")
    assert evict.body == {"apiVersion": "policy/v1", "kind": "Eviction",
                          "metadata": {"name": "a", "namespace": "tenant-t"}}


def test_drain_of_a_lease_pod_ends_it(backend, cluster):
    cluster.ensure_tenancy("t")
    cluster.create_lease_pod(lease_id="1", tenant="t", image="busybox", node="n1", gpu_indexes=[0])
    backend.set_pod_phase("tenant-t", "lease-1", "Running")
    assert cluster.drain("n1").evicted == ("tenant-t/lease-1",)
    assert cluster.get_lease_pod(lease_id="1", tenant="t") is None


def test_watch_lists_then_follows_and_resumes(backend, cluster):
    cluster.ensure_tenancy("t")
    cluster.create_lease_pod(lease_id="1", tenant="t", image="busybox", node="n1", gpu_indexes=[0])
    stream = cluster.watch_lease_pods(timeout=5)
    listed = next(stream)
    assert (listed.name, listed.phase, listed.lease_id) == ("lease-1", "Pending", "1")
    backend.set_pod_phase("tenant-t", "lease-1", "Running")
    running = next(s for s in stream if s.phase == "Running")
    assert int(running.resource_version) > int(listed.resource_version)
    stream.close()

    backend.set_pod_phase("tenant-t", "lease-1", "Succeeded")
    assert cluster.get_lease_pod(lease_id="1", tenant="t").phase == "Succeeded"
    cluster.delete_lease_pod(lease_id="1", tenant="t")
    resumed = list(cluster.watch_lease_pods(resource_version=running.resource_version, timeout=1))
    assert [(s.phase, s.exit_code) for s in resumed] == [("Succeeded", 0), ("Deleted", 0)]


def test_gpu_lease_lifecycle_and_finalizer_only_after_levelling(backend, cluster):
    path = "/apis/gpuconsole.dev/v1alpha1/gpuleases/lease-42"
    lease = cluster.create_gpu_lease(lease_id="42", tenant="landon", node="gpu-node-1", gpu_module_ids=[7, 8],
                                     pci_addresses=["0000:18:00.0", "0000:2a:00.0"], pod="lease-42")
    assert lease.phase == "Reserved" and not lease.finalized
    assert (lease.node, lease.gpu_module_ids, lease.pci_addresses) == (
        "gpu-node-1", (7, 8), ("0000:18:00.0", "0000:2a:00.0"))
    stored = backend.get(path)
    assert stored["kind"] == "GpuLease" and stored["metadata"]["finalizers"] == ["gpuconsole.dev/scrub-and-level"]
    assert cluster.create_gpu_lease(lease_id="42", tenant="landon", node="gpu-node-1", gpu_module_ids=[7, 8],
                                    pci_addresses=["0000:18:00.0", "0000:2a:00.0"], pod="lease-42") == lease

    assert cluster.set_gpu_lease_phase("42", kc.GpuLeasePhase.SCRUBBING).phase == "Scrubbing"
    cluster.delete_gpu_lease("42")
    assert cluster.get_gpu_lease("42").deleting  # held by our finalizer
    assert backend.get(path)["metadata"]["deletionTimestamp"]

    with pytest.raises(FailedPrecondition):
        cluster.finalize_gpu_lease("42", levelled=False)
    assert backend.get(path) is not None

    cluster.set_gpu_lease_phase("42", kc.GpuLeasePhase.LEVELLED)
    cluster.finalize_gpu_lease("42", levelled=True)
    assert backend.get(path) is None  # deleted once finalized
    assert cluster.get_gpu_lease("42") is None
    assert cluster.finalize_gpu_lease("42", levelled=True) is None
