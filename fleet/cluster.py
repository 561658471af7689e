"""The one accessor for the cluster adapter: settings choose the real or the simulated cluster."""

from __future__ import annotations

import threading

from django.conf import settings
from django.utils.module_loading import import_string

from hardware.cluster import Cluster

_cluster: Cluster | None = None
_lock = threading.Lock()


def get_cluster() -> Cluster:
    """The process-wide cluster adapter named by settings.CLUSTER_ADAPTER (a class or a factory)."""
    global _cluster
    with _lock:
        if _cluster is None:
            factory = import_string(settings.CLUSTER_ADAPTER)
            _cluster = factory.from_settings() if hasattr(factory, "from_settings") else factory()
        return _cluster


def set_cluster(cluster: Cluster | None) -> None:
    """Install an adapter (tests, the simulated fleet command); None resets to settings."""
    global _cluster
    with _lock:
        _cluster = cluster


class _ServerEndpoints:
    """node name → agent endpoint, read from the Server rows (what simfleet registered)."""

    def get(self, node: str):
        from types import SimpleNamespace

        from fleet.models import Server

        row = Server.objects.filter(k8s_node_name=node).values_list("agent_endpoint", "hostname").first()
        if row is None or not row[0]:
            return None
        return SimpleNamespace(address=row[0], node=row[1])


def simulated_cluster() -> Cluster:
    """The simulated cluster over the simulated fleet's SimAdmin service (simulator mode only).

    Imported by name so production code never imports the simulator."""
    from fleet.agents import _identity

    cluster_cls = import_string("simulator.cluster.SimulatedCluster")
    nodes = import_string("simulator.cluster.sim_admin_nodes")
    identity = _identity()
    access = nodes(_ServerEndpoints(), insecure=identity is None, credentials=identity,
                   timeout=settings.AGENT_TIMEOUT_S)
    return cluster_cls(access, workload_seconds=settings.SIM_WORKLOAD_S)
