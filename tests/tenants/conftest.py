"""Fixtures for lease tests: a ready tenant, a registered simulated fleet, a lock held elsewhere."""

from __future__ import annotations

import contextlib
import threading

import pytest

from console.audit import Actor
from tenants.states import TenantState
from tests.factories import TenantFactory
from tests.support.simfleet import register, sim_fleet_with_cluster


@pytest.fixture
def ready_tenant(db):
    return TenantFactory(state=TenantState.READY, gpu_quota=64)


SIM_ACTOR = Actor.system("tenant-api", source="api")


@pytest.fixture
def sim(transactional_db, settings, tasks):
    """Two simulated HGX H100 servers on loopback, registered from their GetInventory."""
    with sim_fleet_with_cluster(settings) as fleet:
        register(fleet, actor=SIM_ACTOR)
        yield fleet


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
