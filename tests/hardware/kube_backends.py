"""The two Kubernetes API servers `KubernetesCluster` is tested against, behind one small interface.

- `mock`: tests/hardware/kube_mock.py, the project's loopback Kubernetes API mock (records requests,
  injects faults, pod phases set by the test);
- `sim`: simulator/kube_server.py, the simulated cluster's API server that `manage.py simfleet`
  serves, here over fake nodes whose VM states the test sets (`FakeNode`).

The tests read and seed objects over HTTP (`get`, and the official client for creates), so the
same test body runs against both; only what is scripted (a pod's phase, a disruption budget) differs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from kubernetes import client

from hardware.kube import url_api_client
from hardware.types import VmState
from simulator.kube_server import KubeApiServer
from tests.hardware.kube_mock import KubeMock
from tests.support.fake_nodes import FakeNode

NODES = ("n1", "n2", "gpu-node-1")
EXIT_CODES = {"Succeeded": 0, "Failed": 1}
VM_STATES = {"Running": VmState.RUNNING, "Succeeded": VmState.SUCCEEDED, "Failed": VmState.FAILED}


class Backend:
    name = ""
    url = ""

    def api_client(self) -> client.ApiClient:
        return url_api_client(self.url)

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at an API path, read over HTTP, or None (404)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def seed_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        with self.api_client() as api:
            client.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": labels or {}}})

    def seed_pod(self, namespace: str, body: dict[str, Any]) -> None:
        with self.api_client() as api:
            client.CoreV1Api(api).create_namespaced_pod(namespace, body)

    def seed_custom(self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]) -> None:
        with self.api_client() as api:
            client.CustomObjectsApi(api).create_namespaced_custom_object(group, version, namespace, plural, body)


class MockBackend(Backend):
    name = "mock"

    def __init__(self) -> None:
        self.server = KubeMock().start()
        self.url = self.server.url
        for node in NODES:
            self.server.put("/api/v1/nodes", {"metadata": {"name": node}, "spec": {}})

    @property
    def requests(self) -> int:
        return len(self.server.requests)

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> None:
        self.server.set_pod_phase(namespace, name, phase, exit_code=EXIT_CODES.get(phase))

    def protect(self, namespace: str, name: str) -> None:
        self.server.pdb_blocks.add(name)

    def stop(self) -> None:
        self.server.stop()


class SimBackend(Backend):
    name = "sim"

    def __init__(self) -> None:
        self.nodes = {name: FakeNode(name) for name in NODES}
        self.server = KubeApiServer(self.nodes.__getitem__, node_names=NODES, sync_interval=0.02).start()
        self.url = self.server.url

    @property
    def requests(self) -> int:
        return self.server.requests_served

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> None:
        pod = self.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        node = self.nodes[pod["spec"]["nodeName"]]
        node.set(f"{namespace}.{name}", VM_STATES[phase], "" if phase != "Failed" else "CUDA error 802")

    def protect(self, namespace: str, name: str) -> None:
        self.server.protected_pods.add(f"{namespace}/{name}")

    def stop(self) -> None:
        self.server.stop()


BACKENDS = {"mock": MockBackend, "sim": SimBackend}
