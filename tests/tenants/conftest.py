"""Fixtures for lease tests: a task queue the test drains by hand, a ready tenant."""

from __future__ import annotations

import contextlib
import threading

import pytest

from console.audit import Actor
from fleet import cluster as cluster_access
from fleet import dispatch
from fleet.agents import forget_agents
from fleet.inventory import server_register_from_inventory
from hardware.agent_client import AgentClient
from simulator.cluster import SimulatedCluster, sim_admin_nodes
from simulator.fleet import SimFleet
from tenants.states import TenantState
from tests.factories import TenantFactory


class TaskQueue:
    """Collects what services enqueue; `run()` executes it in order, like a worker would."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, tuple]] = []
        self.ran: list[tuple[str, tuple]] = []

    def enqueue(self, name: str, *args) -> None:
        self.queued.append((name, args))

    def names(self) -> list[str]:
        return [name for name, _ in self.queued]

    def run(self, limit: int = 500, skip: tuple[str, ...] = ()) -> int:
        done = 0
        while self.queued and done < limit:
            name, args = self.queued.pop(0)
            if name in skip:
                continue
            self.ran.append((name, args))
            # Not throw=True: an eager task's retries only run when apply() is left to catch the Retry.
            result = dispatch.task(name).apply(args=args)
            if result.failed():
                raise result.result
            done += 1
        return done


@pytest.fixture
def tasks(monkeypatch, request) -> TaskQueue:
    """Under `db` (one transaction that never commits) on_commit never fires, so enqueue at once;
    under `transactional_db` the real on_commit runs."""
    queue = TaskQueue()
    monkeypatch.setattr(dispatch, "enqueue", queue.enqueue)
    if "transactional_db" not in request.fixturenames:
        monkeypatch.setattr(dispatch, "on_commit", queue.enqueue)
    return queue


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
