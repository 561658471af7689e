"""Simulated servers on loopback for database tests: started, registered from their GetInventory,
and (with the simulated cluster's Kubernetes API server) stopped again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from console.audit import Actor
from fleet import cluster as cluster_access
from fleet.agents import forget_agents
from fleet.inventory import server_register_from_inventory
from fleet.models import Server
from hardware.agent_client import AgentClient
from simulator.fleet import SimFleet
from simulator.kube_server import KubeApiServer

_kube: KubeApiServer | None = None


def register(fleet: SimFleet, *, actor: Actor, names: Iterable[str] | None = None) -> list[Server]:
    """Register the fleet's servers (or those named) from what their agents report."""
    servers = []
    for slot, (name, endpoint) in enumerate(fleet.endpoints.items(), start=1):
        if names is not None and name not in names:
            continue
        with AgentClient(endpoint.address, node=endpoint.node, insecure=True) as client:
            inventory = client.get_inventory()
        server_register_from_inventory(inventory=inventory, rack="r1", slot=slot, agent_endpoint=endpoint.address,
                                       actor=actor, source="simulator")
        servers.append(Server.objects.get(hostname=name))
    return servers


def sim_kube() -> KubeApiServer:
    """The simulated cluster's API server of the running `sim_fleet_with_cluster`."""
    assert _kube is not None, "no sim_fleet_with_cluster is running"
    return _kube


@contextlib.contextmanager
def sim_fleet_with_cluster(settings, servers: int = 2) -> Iterator[SimFleet]:
    """`servers` simulated HGX H100 servers (insecure, accelerated clock) and the simulated cluster's
    Kubernetes API server over them (port 0), as `manage.py simfleet` serves them; the console's
    `get_cluster()` reaches it through `KubernetesCluster` over HTTP. Nothing registered yet."""
    global _kube
    settings.AGENT_INSECURE = True
    forget_agents()
    fleet = SimFleet(servers, platform="hgx-h100-8", variant="supermicro", insecure=True, accel=2000.0).start()
    try:
        _kube = KubeApiServer.for_fleet(fleet, insecure=True, sync_interval=0.05, workload_seconds=0).start()
    except Exception:
        fleet.stop()
        raise
    # The product's own path: get_cluster() builds KubernetesCluster at SIM_KUBE_URL.
    settings.CLUSTER_ADAPTER = "fleet.cluster.simulated_cluster"
    settings.SIM_KUBE_URL = _kube.url
    cluster_access.set_cluster(None)
    try:
        yield fleet
    finally:
        cluster_access.set_cluster(None)
        forget_agents()
        _kube.stop()
        _kube = None
        fleet.stop()
