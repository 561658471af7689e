"""The simulated cluster's Kubernetes API server (simulator/kube_server.py): what the real API server
does that the console relies on, pods as VMs on simulated nodes, and state that outlives the console.

The adapter's own behaviour against it is tests/hardware/test_kube.py (both backends); here are the
server's semantics, over raw HTTP where the adapter would hide them."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client

from hardware import kube_constants as kc
from hardware.exceptions import ClusterUnavailable
from hardware.kube import KubernetesCluster, url_api_client
from hardware.types import VmState
from simulator.kube_server import KubeApiServer
from simulator.kube_store import NODES, PODS
from tests.support.fake_nodes import FakeNode

GPULEASES = "/apis/gpuconsole.dev/v1alpha1/gpuleases"


@pytest.fixture
def nodes():
    return {"n1": FakeNode("n1"), "n2": FakeNode("n2")}


@pytest.fixture
def server(nodes):
    before = set(threading.enumerate())
    running = KubeApiServer(nodes.__getitem__, node_names=nodes, sync_interval=0.02, guest_ram_gib=32).start()
    yield running
    running.stop()
    assert set(threading.enumerate()) <= before  # every thread it started is gone


@pytest.fixture
def cluster(server):
    with url_api_client(server.url) as api:
        yield KubernetesCluster(api, request_timeout=5)


def call(server, method, path, body=None, content_type="application/json"):
    """(HTTP status, JSON answer) of one raw request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _pod(cluster, lease_id="1", node="n1", gpus=(0, 1)):
    return cluster.create_lease_pod(lease_id=lease_id, tenant="acme", image="nvcr.io/nvidia/cuda:12.4",
                                    node=node, gpu_indexes=list(gpus))


def test_errors_are_status_objects_with_the_real_codes(server):
    code, body = call(server, "GET", "/api/v1/namespaces/tenant-x/pods/lease-1")
    assert code == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"
    assert body["message"] == 'pods "lease-1" not found' and body["details"]["name"] == "lease-1"

    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant-x"}}
    code, created = call(server, "POST", "/api/v1/namespaces", ns)
    assert code == 201 and created["metadata"]["uid"] and created["status"]["phase"] == "Active"
    code, body = call(server, "POST", "/api/v1/namespaces", ns)
    assert (code, body["reason"]) == (409, "AlreadyExists")

    code, body = call(server, "POST", "/api/v1/namespaces/tenant-y/pods", {"metadata": {"name": "p"}})
    assert (code, body["message"]) == (404, 'namespaces "tenant-y" not found')
    code, body = call(server, "POST", "/api/v1/namespaces", {"metadata": {"name": "Not_A_Label"}})
    assert (code, body["reason"], body["status"]) == (422, "Invalid", "Failure")
    code, body = call(server, "POST", "/api/v1/namespaces", {"metadata": {}})
    assert code == 422

    stale = {"metadata": {"labels": {"a": "b"}, "resourceVersion": "1"}}
    code, body = call(server, "PATCH", "/api/v1/namespaces/tenant-x", stale, "application/merge-patch+json")
    assert (code, body["reason"]) == (409, "Conflict") and "has been modified" in body["message"]
    code, _ = call(server, "PATCH", "/api/v1/namespaces/tenant-x", [{"op": "add"}], "application/json-patch+json")
    assert code == 415
    code, body = call(server, "GET", "/apis/example.com/v1/widgets")
    assert (code, body["reason"]) == (404, "NotFound")


def test_writes_bump_one_resource_version_and_lists_carry_it(server):
    _, first = call(server, "POST", "/api/v1/namespaces", {"metadata": {"name": "a", "labels": {"x": "1"}}})
    _, second = call(server, "POST", "/api/v1/namespaces", {"metadata": {"name": "b"}})
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    _, listing = call(server, "GET", "/api/v1/namespaces?labelSelector=")
    assert listing["kind"] == "NamespaceList" and listing["apiVersion"] == "v1"
    assert listing["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    assert [n["metadata"]["name"] for n in listing["items"]] == ["a", "b"]
    unchanged = {"metadata": {"labels": {"x": "1"}}}
    _, same = call(server, "PATCH", "/api/v1/namespaces/a", unchanged, "application/merge-patch+json")
    assert same["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]  # a no-op is no write


def test_status_subresource_changes_only_status(server):
    body = {"apiVersion": kc.GROUP_VERSION, "kind": "GpuLease", "metadata": {"name": "lease-1"},
            "spec": {"leaseId": "1"}, "status": {"phase": "Levelled"}}
    code, created = call(server, "POST", GPULEASES, body)
    assert code == 201 and "status" not in created  # a create ignores status, as with a CRD's subresource
    merge = "application/merge-patch+json"
    code, patched = call(server, "PATCH", f"{GPULEASES}/lease-1", {"status": {"phase": "Running"}}, merge)
    assert code == 200 and "status" not in patched
    code, patched = call(server, "PATCH", f"{GPULEASES}/lease-1/status",
                         {"spec": {"leaseId": "2"}, "status": {"phase": "Running"}}, merge)
    assert patched["status"] == {"phase": "Running"} and patched["spec"] == {"leaseId": "1"}


def test_finalizers_hold_a_delete_and_none_may_be_added_meanwhile(server):
    body = {"metadata": {"name": "lease-1", "finalizers": [kc.GPULEASE_FINALIZER]}, "spec": {"leaseId": "1"}}
    call(server, "POST", GPULEASES, body)
    code, deleting = call(server, "DELETE", f"{GPULEASES}/lease-1")
    assert code == 200 and deleting["metadata"]["deletionTimestamp"]
    merge = "application/merge-patch+json"
    code, body = call(server, "PATCH", f"{GPULEASES}/lease-1",
                      {"metadata": {"finalizers": [kc.GPULEASE_FINALIZER, "other/x"]}}, merge)
    assert (code, body["reason"]) == (422, "Invalid") and "no new finalizers" in body["message"]
    assert call(server, "GET", f"{GPULEASES}/lease-1")[0] == 200
    code, _ = call(server, "PATCH", f"{GPULEASES}/lease-1", {"metadata": {"finalizers": []}}, merge)
    assert code == 200
    assert call(server, "GET", f"{GPULEASES}/lease-1")[0] == 404


def test_pod_follows_its_vm(cluster, nodes):
    cluster.ensure_tenancy("acme")
    created = _pod(cluster)
    assert (created.phase, created.reason, created.node) == ("Pending", "ContainerCreating", "n1")
    # The VM exists once the create returns: the console follows its boot right after.
    assert nodes["n1"].calls == [("start", "tenant-acme.lease-1", "lease-1", (0, 1), 32, 0.0)]
    assert _pod(cluster).name == created.name  # adopting its own pod starts nothing new
    assert len(nodes["n1"].calls) == 1

    nodes["n1"].set("tenant-acme.lease-1", VmState.RUNNING)
    assert cluster.get_lease_pod(lease_id="1", tenant="acme").phase == "Running"
    nodes["n1"].set("tenant-acme.lease-1", VmState.SUCCEEDED)
    done = cluster.get_lease_pod(lease_id="1", tenant="acme")
    assert (done.phase, done.exit_code, done.reason) == ("Succeeded", 0, "Completed")
    nodes["n1"].set("tenant-acme.lease-1", VmState.RUNNING)  # an ended pod stays ended (restartPolicy Never)
    assert cluster.get_lease_pod(lease_id="1", tenant="acme").phase == "Succeeded"


def test_failed_vm_refused_start_and_unreachable_node(server, cluster, nodes):
    cluster.ensure_tenancy("acme")
    _pod(cluster, lease_id="1")
    nodes["n1"].set("tenant-acme.lease-1", VmState.FAILED, "CUDA error 802")
    failed = cluster.get_lease_pod(lease_id="1", tenant="acme")
    assert (failed.phase, failed.exit_code, failed.reason) == ("Failed", 1, "Error")
    stored = server.store.get(PODS, "tenant-acme", "lease-1")
    assert stored["status"]["message"] == "CUDA error 802"

    nodes["n2"].refuse = "GPU 1 is not bound to vfio-pci"
    refused = _pod(cluster, lease_id="2", node="n2")
    assert (refused.phase, refused.exit_code, refused.reason) == ("Failed", 128, "StartError")

    nodes["n1"].unreachable = True
    assert _pod(cluster, lease_id="3", gpus=[5]).reason == "NodeUnreachable"
    nodes["n1"].unreachable = False
    assert cluster.get_lease_pod(lease_id="3", tenant="acme").reason == "ContainerCreating"


def test_cordon_holds_new_pods_and_uncordon_starts_them(cluster, nodes):
    cluster.ensure_tenancy("acme")
    cluster.cordon("n1")
    waiting = _pod(cluster)
    assert (waiting.phase, waiting.node) == ("Pending", "")
    assert nodes["n1"].calls == []
    cluster.uncordon("n1")
    assert nodes["n1"].calls[0][0] == "start"
    assert cluster.get_lease_pod(lease_id="1", tenant="acme").node == "n1"


def test_delete_and_eviction_stop_the_vm_and_a_budget_refuses(server, cluster, nodes):
    cluster.ensure_tenancy("acme")
    _pod(cluster, lease_id="1", gpus=[0])
    _pod(cluster, lease_id="2", gpus=[1])
    _pod(cluster, lease_id="3", node="n2", gpus=[0])
    server.protected_pods.add("tenant-acme/lease-2")

    cluster.delete_lease_pod(lease_id="3", tenant="acme")
    assert ("stop", "tenant-acme.lease-3") in nodes["n2"].calls
    report = cluster.drain("n1")

    assert report.evicted == ("tenant-acme/lease-1",)
    assert [r.pod for r in report.refused] == ["lease-2"] and "disruption budget" in report.refused[0].reason
    assert ("stop", "tenant-acme.lease-1") in nodes["n1"].calls
    assert ("stop", "tenant-acme.lease-2") not in nodes["n1"].calls
    assert server.store.get(NODES, "", "n1")["spec"]["unschedulable"] is True


def test_watch_from_a_compacted_version_is_gone_and_the_adapter_relists(nodes):
    with KubeApiServer(nodes.__getitem__, node_names=nodes, history=3, sync_interval=0.02) as server:
        cluster = KubernetesCluster(url_api_client(server.url), request_timeout=5)
        cluster.ensure_tenancy("acme")
        _pod(cluster)
        for state in (VmState.RUNNING, VmState.SUCCEEDED):
            nodes["n1"].set("tenant-acme.lease-1", state)
            cluster.get_lease_pod(lease_id="1", tenant="acme")
        with urllib.request.urlopen(f"{server.url}/api/v1/pods?watch=true&resourceVersion=1000&timeoutSeconds=1",
                                    timeout=5) as answer:
            [event] = [json.loads(line) for line in answer.read().splitlines() if line]
        assert event["type"] == "ERROR" and event["object"]["code"] == 410

        relisted = next(cluster.watch_lease_pods(resource_version="1000", timeout=2))
        assert (relisted.name, relisted.phase) == ("lease-1", "Succeeded")


def test_watch_sends_a_bookmark_and_selects_by_label(server, cluster):
    cluster.ensure_tenancy("acme")
    version = server.store.resource_version
    call(server, "POST", "/api/v1/namespaces/tenant-acme/pods",
         {"metadata": {"name": "plain"}, "spec": {"nodeName": "n2", "containers": [{"name": "c", "image": "x"}]}})
    _pod(cluster)
    url = (f"{server.url}/api/v1/pods?watch=true&resourceVersion={version}&timeoutSeconds=1"
           f"&allowWatchBookmarks=true&labelSelector={kc.LEASE_LABEL}")
    with urllib.request.urlopen(url, timeout=5) as answer:
        events = [json.loads(line) for line in answer.read().splitlines() if line]
    assert {e["object"]["metadata"].get("name") for e in events if e["type"] != "BOOKMARK"} == {"lease-1"}
    assert events[0]["type"] == "ADDED" and events[-1]["type"] == "BOOKMARK"
    assert int(events[-1]["object"]["metadata"]["resourceVersion"]) >= server.store.resource_version - 1


def test_stop_ends_open_watches_and_connections(nodes):
    server = KubeApiServer(nodes.__getitem__, node_names=nodes).start()
    cluster = KubernetesCluster(url_api_client(server.url), request_timeout=5)
    cluster.ensure_tenancy("acme")  # a keep-alive connection is now open
    watching = threading.Thread(target=lambda: list(urllib.request.urlopen(
        f"{server.url}/api/v1/pods?watch=true&timeoutSeconds=60", timeout=30)))
    watching.start()
    time.sleep(0.2)
    started = time.monotonic()
    server.stop()
    watching.join(10)
    assert not watching.is_alive() and time.monotonic() - started < 5
    assert not [t for t in threading.enumerate() if t.name.startswith("sim-kube")]
    with pytest.raises(ClusterUnavailable) as caught:
        KubernetesCluster(url_api_client(server.url), request_timeout=2).get_tenancy("acme")
    assert caught.value.retryable
    with pytest.raises(ClusterUnavailable):
        cluster.get_tenancy("acme")  # the kept-alive connection was closed too


def test_listens_on_loopback_only(nodes):
    with pytest.raises(ValueError):
        KubeApiServer(nodes.__getitem__, node_names=nodes, host="0.0.0.0")


def test_discovery_version_and_kubeconfig(server, tmp_path):
    with url_api_client(server.url) as api:
        assert client.VersionApi(api).get_code().git_version.startswith("v1.")
        assert client.CoreApi(api).get_api_versions().versions == ["v1"]
        groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
        assert groups == {kc.API_GROUP, kc.CILIUM_GROUP}
        resources = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
        assert {"namespaces", "nodes", "pods", "pods/eviction", "pods/status"} <= resources
    path = server.write_kubeconfig(tmp_path / "kubeconfig.yaml")
    assert KubernetesCluster(kubeconfig=str(path), request_timeout=5).ensure_tenancy("acme").ready


# -- with a real simulated fleet: VMs over SimAdmin gRPC --------------------------------------------

@pytest.fixture
def fleet():
    from simulator.fleet import SimFleet

    with SimFleet(1, insecure=True, accel=100_000.0) as running:
        yield running


def _prepare_gpu(fleet, module_id):
    """Bind the GPU to vfio-pci and activate its one-GPU partition, as the console would."""
    from hardware.agent_client import AgentClient

    [endpoint] = fleet.endpoints.values()
    with AgentClient(endpoint.address, insecure=True, node=endpoint.node) as agent:
        gpu = next(g for g in agent.get_inventory().gpus if g.module_id == module_id)
        agent.bind_vfio(gpu.pci.address)
        partition = next(p for p in agent.list_partitions() if p.gpu_module_ids == (module_id,))
        agent.activate_partition(partition.partition_id)


def _wait_for(cluster, phase, lease_id="1"):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pod = cluster.get_lease_pod(lease_id=lease_id, tenant="acme")
        if pod.phase == phase:
            return pod
        time.sleep(0.05)
    raise AssertionError(f"pod {lease_id} never reached {phase}: {pod}")


def test_cluster_state_survives_a_console_restart(fleet):
    """The console (or its worker) goes away mid-lease; a fresh one finds the cluster as it was."""
    from hardware.agent_client import SimAdminClient

    [(node, endpoint)] = fleet.endpoints.items()
    _prepare_gpu(fleet, 1)
    with KubeApiServer.for_fleet(fleet, insecure=True, sync_interval=0.05) as server:
        first = url_api_client(server.url)
        console = KubernetesCluster(first, request_timeout=5)
        console.ensure_tenancy("acme")
        lease = console.create_gpu_lease(lease_id="1", tenant="acme", node=node, gpu_module_ids=[1],
                                         pci_addresses=["0000:18:00.0"], pod="lease-1")
        console.create_lease_pod(lease_id="1", tenant="acme", image="busybox", node=node, gpu_indexes=[1])
        running = _wait_for(console, "Running")
        first.close()
        del console, first  # the console process is gone

        restarted = KubernetesCluster(url_api_client(server.url), request_timeout=5)
        assert restarted.get_tenancy("acme").ready
        assert restarted.get_gpu_lease("1") == lease
        pod = restarted.get_lease_pod(lease_id="1", tenant="acme")
        assert (pod.phase, pod.node, pod.resource_version) == ("Running", node, running.resource_version)
        listed = next(restarted.watch_lease_pods(timeout=1))
        assert (listed.name, listed.phase) == ("lease-1", "Running")
        with SimAdminClient(endpoint.address, insecure=True, node=endpoint.node) as admin:
            assert admin.get_vm("tenant-acme.lease-1").state is VmState.RUNNING  # the VM still runs

            assert restarted.drain(node).evicted == ("tenant-acme/lease-1",)
            assert admin.get_vm("tenant-acme.lease-1").state is VmState.STOPPED
