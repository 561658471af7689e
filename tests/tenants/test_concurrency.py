"""Invariant 1 under concurrency, on PostgreSQL: 32 clients request at once; no GPU lands in two
leases and the grants add up to exactly what the fleet can hold."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from django.db import connection
from django.utils import timezone

from fleet.models import Gpu
from fleet.states import GPU_MACHINE, GpuState
from tenants import services
from tenants.models import Lease, LeaseGpu
from tenants.states import LEASE_HOLDS_GPUS, LEASE_MACHINE, LeaseState, TenantState
from tests.factories import TenantFactory, make_server
from tests.factories.fleet import TEST_ACTOR

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


def _assert_no_gpu_in_two_leases():
    counts = Counter(LeaseGpu.objects.filter(holds=True).values_list("gpu_id", flat=True))
    assert all(c == 1 for c in counts.values()), "a GPU is in two unfinished leases"


def _assert_invariants():
    _assert_no_gpu_in_two_leases()
    held = LeaseGpu.objects.filter(holds=True)
    for lease in Lease.objects.filter(state__in=LEASE_HOLDS_GPUS).select_related("partition"):
        modules = sorted(lease.gpus.filter(lease_gpus__holds=True).values_list("module_id", flat=True))
        assert modules == lease.partition.module_ids, f"{lease} GPUs are not its partition"
        assert Gpu.objects.filter(pk__in=held.filter(lease=lease).values("gpu_id"),
                                  server_id=lease.server_id).count() == lease.gpu_count


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
    from fleet.services import gpus_begin_clean

    services.lease_release(lease=lease, actor=TEST_ACTOR)
    lease.refresh_from_db()
    LEASE_MACHINE.transition(lease, LeaseState.SCRUBBING, actor=TEST_ACTOR)
    gpus_begin_clean(lease=lease, actor=TEST_ACTOR)
    LEASE_MACHINE.transition(lease, LeaseState.LEVELING, actor=TEST_ACTOR)
    GPU_MACHINE.transition_many(Gpu.objects.filter(current_lease=lease), GpuState.LEVELING, actor=TEST_ACTOR,
                                fields={"leveled_at": timezone.now()})
    services.lease_finish(lease=lease, actor=TEST_ACTOR)


def test_requests_with_releases_interleaved(transactional_db, tasks):
    for _ in range(2):
        make_server()
    tenants = _tenants(CLIENTS)

    def client(i):
        for round_ in range(3):
            lease = services.lease_request(tenant_name=tenants[i].name, image=IMAGE,
                                           gpu_count=[1, 2, 4][(i + round_) % 3], actor=TEST_ACTOR)
            _assert_no_gpu_in_two_leases()
            if lease.state == LeaseState.PLACED:
                _finish_clean(lease)
            else:
                services.lease_release(lease=lease, actor=TEST_ACTOR)

    _run_clients(client)
    _assert_invariants()
    assert LeaseGpu.objects.filter(holds=True).count() == 0
    assert Gpu.objects.filter(state=GpuState.FREE).count() == 16
    assert Lease.objects.filter(state=LeaseState.RELEASED).count() == CLIENTS * 3
