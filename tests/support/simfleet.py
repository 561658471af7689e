"""Simulated servers on loopback for database tests: started, registered from their GetInventory,
and (with a simulated cluster) stopped again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from console.audit import Actor
from fleet import cluster as cluster_access
from fleet.agents import forget_agents
from fleet.inventory import server_register_from_inventory
from fleet.models import Server
from hardware.agent_client import AgentClient
from simulator.cluster import SimulatedCluster, sim_admin_nodes
from simulator.fleet import SimFleet


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


@contextlib.contextmanager
def sim_fleet_with_cluster(settings, servers: int = 2) -> Iterator[SimFleet]:
    """`servers` simulated HGX H100 servers (insecure, accelerated clock) and a simulated cluster over
    them; nothing registered yet."""
    settings.AGENT_INSECURE = True
    forget_agents()
    fleet = SimFleet(servers, platform="hgx-h100-8", variant="supermicro", insecure=True, accel=2000.0).start()
    cluster_access.set_cluster(SimulatedCluster(sim_admin_nodes(fleet.endpoints, insecure=True), workload_seconds=0))
    try:
        yield fleet
    finally:
        cluster_access.set_cluster(None)
        forget_agents()
        fleet.stop()
