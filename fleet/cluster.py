"""The one accessor for the cluster adapter: settings choose a real cluster or the simulated fleet's
(both through `hardware.kube.KubernetesCluster`; tests may install an in-process fake)."""

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


def simulated_cluster() -> Cluster:
    """The simulated fleet's cluster: `KubernetesCluster` over HTTP to the Kubernetes API server that
    `manage.py simfleet` serves at settings.SIM_KUBE_URL, so its state outlives any console process."""
    from hardware.kube import KubernetesCluster, url_api_client

    return KubernetesCluster(url_api_client(settings.SIM_KUBE_URL), request_timeout=settings.KUBE_REQUEST_TIMEOUT_S)
