"""Cross-check KubernetesCluster against an independent emulator: kmock 0.8's KubernetesEmulator.

The main suite (test_kube.py) runs against tests/hardware/kube_mock.py, which also plays 409s,
429s, 410s, resource versions and watches. kmock 0.8 cannot serve Namespace paths (its URL parser
answers 500 before any reaction can match) and sets no resourceVersion, so only the flows that
avoid those run here: pods and the custom resources. Sync tests: the emulator's event loop runs in
a background thread.
"""

from __future__ import annotations

import asyncio
import threading

import kmock
import pytest
from kubernetes import client

from hardware.kube import KubernetesCluster


@pytest.fixture
def emulator():
    started, box = threading.Event(), {}
    loop = asyncio.new_event_loop()

    async def serve():
        box["stop"] = asyncio.Event()
        async with kmock.KubernetesEmulator() as em, kmock.Server(em) as server:
            box["em"], box["url"] = em, str(server.url).rstrip("/")
            started.set()
            await box["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    yield box["em"], box["url"]
    loop.call_soon_threadsafe(box["stop"].set)
    thread.join(5)
    loop.close()


@pytest.fixture
def cluster(emulator):
    configuration = client.Configuration()
    configuration.host = emulator[1]
    configuration.retries = 0
    return KubernetesCluster(client.ApiClient(configuration), request_timeout=5)


def _stored(em):
    keys = em.objects.keys()
    return {(key[0].plural, key[1], key[2]) for key in keys}


def test_lease_pod_and_gpulease_against_kmock(emulator, cluster):
    em, _ = emulator
    pod = cluster.create_lease_pod(lease_id="1", tenant="acme", image="busybox:1.36", node="n1", gpu_indexes=[0, 1])
    assert (pod.name, pod.namespace, pod.lease_id) == ("lease-1", "tenant-acme", "1")
    lease = cluster.create_gpu_lease(lease_id="1", tenant="acme", node="n1", gpu_module_ids=[1, 2],
                                     pci_addresses=["0000:18:00.0", "0000:2a:00.0"], pod="lease-1")
    assert not lease.finalized and lease.phase == "Reserved"
    assert _stored(em) == {("pods", "tenant-acme", "lease-1"), ("gpuleases", None, "lease-1")}

    keys = em.objects.keys()
    stored_pod = em.objects[next(k for k in keys if k[0].plural == "pods")]
    assert stored_pod["spec"]["runtimeClassName"] == "kata-qemu-nvidia-gpu"
    assert stored_pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}

    assert cluster.get_lease_pod(lease_id="1", tenant="acme").name == "lease-1"
    assert cluster.finalize_gpu_lease("1", levelled=True).finalized
    cluster.delete_lease_pod(lease_id="1", tenant="acme")
    assert cluster.get_lease_pod(lease_id="1", tenant="acme") is None
