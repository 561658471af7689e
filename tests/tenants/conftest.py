"""Fixtures for lease tests: a task queue the test drains by hand, a ready tenant."""

from __future__ import annotations

import contextlib
import threading

import pytest

from console.audit import Actor
from fleet import cluster as cluster_access
from fleet.agents import forget_agents
from fleet.inventory import server_register_from_inventory
from hardware.agent_client import AgentClient
from simulator.cluster import SimulatedCluster, sim_admin_nodes
from simulator.fleet import SimFleet
from tenants.states import TenantState
from tests.factories import TenantFactory


@pytest.fixture
def ready_tenant(db):
    return TenantFactory(state=TenantState.READY, gpu_quota=64)


SIM_ACTOR = Actor.system("tenant-api", source="api")


@pytest.fixture
def sim(transactional_db, settings, tasks):
    """Two simulated HGX H100 servers on loopback, registered from their GetInventory."""
    settings.AGENT_INSECURE = True
    forget_agents()
    fleet = SimFleet(2, platform="hgx-h100-8", variant="supermicro", insecure=True, accel=2000.0).start()
    for slot, endpoint in enumerate(fleet.endpoints.values(), start=1):
        with AgentClient(endpoint.address, node=endpoint.node, insecure=True) as client:
            inventory = client.get_inventory()
        server_register_from_inventory(inventory=inventory, rack="r1", slot=slot, agent_endpoint=endpoint.address,
                                       actor=SIM_ACTOR, source="simulator")
    cluster = SimulatedCluster(sim_admin_nodes(fleet.endpoints, insecure=True), workload_seconds=0)
    cluster_access.set_cluster(cluster)
    yield fleet
    cluster_access.set_cluster(None)
    forget_agents()
    fleet.stop()


@contextlib.contextmanager
def lock_held_elsewhere(name: str):
    """Hold the named lock from another thread (its own database session) while the body runs:
    PostgreSQL advisory locks are re-entrant within one session, as another worker's are not."""
    from django.db import connection

    from console.locks import try_lock

    ready, done, held = threading.Event(), threading.Event(), []

    def holder():
        try:
            with try_lock(name) as ok:
                held.append(ok)
                ready.set()
                done.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    ready.wait(10)
    try:
        assert held == [True]
        yield
    finally:
        done.set()
        thread.join(10)
