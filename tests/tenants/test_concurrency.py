"""Invariant 1 under concurrency, on PostgreSQL: 32 clients request at once; no GPU lands in two
leases and the grants add up to exactly what the fleet can hold."""

from __future__ import annotations

import random
import threading

import pytest
from django.db import connection

from fleet.models import AllocationGpu, Gpu
from fleet.states import GpuState
from tenants import services
from tenants.models import Lease
from tenants.states import LEASE_HOLDS_GPUS, LEASE_MACHINE, LeaseState, TenantState
from tests.factories import TenantFactory, make_server
from tests.factories.fleet import TEST_ACTOR
from tests.support.invariants import (
    assert_allocations_are_partitions,
    assert_no_gpu_in_two_open_allocations,
    clean_without_agents,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
IMAGE = "registry.example.com/team/job:1"
CLIENTS = 32


def _run_clients(fn, n=CLIENTS):
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker(i):
        try:
            barrier.wait()
            fn(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def _assert_invariants():
    assert_no_gpu_in_two_open_allocations()
    assert_allocations_are_partitions()
    for lease in Lease.objects.filter(state__in=LEASE_HOLDS_GPUS).select_related("allocation"):
        assert lease.allocation.gpus.filter(allocation_gpus__held=True).count() == lease.gpu_count


def _tenants(n):
    return [TenantFactory(state=TenantState.READY, gpu_quota=64) for _ in range(n)]


def test_32_clients_at_once_fill_the_fleet_exactly(transactional_db, tasks):
    for _ in range(4):
        make_server()
    tenants = _tenants(CLIENTS)
    _run_clients(lambda i: services.lease_request(
        tenant_name=tenants[i].name, image=IMAGE, gpu_count=2, actor=TEST_ACTOR))
    _assert_invariants()
    placed = Lease.objects.filter(state=LeaseState.PLACED).count()
    assert placed == 16  # 4 servers × 4 pairs
    assert Lease.objects.filter(state=LeaseState.PENDING).count() == CLIENTS - placed
    assert Gpu.objects.filter(state=GpuState.FREE).count() == 0


def test_mixed_sizes_never_double_allocate(transactional_db, tasks):
    for _ in range(3):
        make_server()
    tenants = _tenants(CLIENTS)
    sizes = [random.Random(i).choice([1, 2, 4, 8]) for i in range(CLIENTS)]
    _run_clients(lambda i: services.lease_request(
        tenant_name=tenants[i].name, image=IMAGE, gpu_count=sizes[i], actor=TEST_ACTOR))
    _assert_invariants()
    granted = sum(Lease.objects.filter(state=LeaseState.PLACED).values_list("gpu_count", flat=True))
    assert granted == Gpu.objects.exclude(state=GpuState.FREE).count()
    assert granted <= 24


def _finish_clean(lease: Lease) -> None:
    """What the orchestration does once the agent scrubbed and levelled every GPU."""
    services.lease_release(lease=lease, actor=TEST_ACTOR)
    lease.refresh_from_db()
    clean_without_agents(lease.allocation, TEST_ACTOR)
    LEASE_MACHINE.transition(lease, LeaseState.SCRUBBING, actor=TEST_ACTOR)
    LEASE_MACHINE.transition(lease, LeaseState.LEVELING, actor=TEST_ACTOR)
    services.lease_finish(lease=lease, actor=TEST_ACTOR)


def test_requests_with_releases_interleaved(transactional_db, tasks):
    for _ in range(2):
        make_server()
    tenants = _tenants(CLIENTS)

    def client(i):
        for round_ in range(3):
            lease = services.lease_request(tenant_name=tenants[i].name, image=IMAGE,
                                           gpu_count=[1, 2, 4][(i + round_) % 3], actor=TEST_ACTOR)
            assert_no_gpu_in_two_open_allocations()
            if lease.state == LeaseState.PLACED:
                _finish_clean(lease)
            else:
                services.lease_release(lease=lease, actor=TEST_ACTOR)

    _run_clients(client)
    _assert_invariants()
    assert not AllocationGpu.objects.filter(held=True).exists()
    assert Gpu.objects.filter(state=GpuState.FREE).count() == 16
    assert Lease.objects.filter(state=LeaseState.RELEASED).count() == CLIENTS * 3
