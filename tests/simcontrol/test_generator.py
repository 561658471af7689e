"""The workload generator: its requests follow the seeded schedule through the tenants' request path,
its state lives in the database (a restarted process goes on where it was), each lease is released
through the release path when its lifetime ends, and on a simulated fleet its leases obey every
invariant."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from console.audit import Actor
from console.models import AuditEvent
from fleet import cluster as cluster_access
from fleet.agents import forget_agents
from fleet.models import Gpu
from fleet.states import GpuState
from simcontrol import generator
from simcontrol.models import GeneratedLease, Simulation
from simcontrol.schedule import Params, schedule
from simulator.cluster import SimulatedCluster, sim_admin_nodes
from simulator.fleet import SimFleet
from tenants.models import Lease, Tenant
from tenants.states import LEASE_TERMINAL, LeaseState
from tests.factories import make_server
from tests.support.invariants import (
    assert_active_partitions_disjoint,
    assert_allocations_are_partitions,
    assert_free_only_after_scrub_and_level,
    assert_held_gpus_have_an_allocation,
    assert_no_gpu_in_two_open_allocations,
)
from tests.support.simfleet import register

pytestmark = pytest.mark.django_db
ADMIN = Actor.system("test-admin")
PARAMS = Params(rate_per_min=12.0, sizes=((1, 4.0), (2, 3.0), (4, 2.0), (8, 1.0)), lifetime_min_s=60,
                lifetime_max_s=180, tenants=3)


def _issued() -> list[tuple[int, str, int]]:
    return [(g.index, g.lease.tenant.name, g.lease.gpu_count)
            for g in GeneratedLease.objects.select_related("lease__tenant").order_by("index")]


def _expected(seed: int, count: int) -> list[tuple[int, str, int]]:
    return [(a.index, generator.tenant_name(a.tenant), a.gpu_count) for a in schedule(seed, PARAMS, count)]


def _run(start, minutes: float, step_s: float = 10.0) -> None:
    for i in range(1, int(minutes * 60 / step_s) + 1):
        generator.generator_tick(now=start + timedelta(seconds=i * step_s))


def test_a_seeded_run_makes_the_schedules_requests_and_the_same_again(tasks):
    make_server()
    sim = generator.generator_start(params=PARAMS, seed=42, actor=ADMIN, tenant_quota=64)
    _run(sim.started_at, minutes=2)
    first = _issued()
    assert len(first) >= 10
    assert first == _expected(42, len(first))
    # Tenants opened through the admins' service (audited), leases recorded by the request service.
    assert set(Tenant.objects.values_list("name", flat=True)) == {"aurora", "boreal", "cirrus"}
    assert AuditEvent.objects.filter(verb="tenants.tenant.created", actor_text="workload-generator").count() == 3
    assert AuditEvent.objects.filter(verb="tenants.lease.requested").count() == len(first)

    GeneratedLease.objects.all().delete()
    Lease.objects.all().delete()
    sim = generator.generator_start(params=PARAMS, seed=42, actor=ADMIN, tenant_quota=64)
    _run(sim.started_at, minutes=2)
    assert _issued() == first


def test_state_is_in_the_database_and_downtime_is_skipped_not_burst(tasks):
    make_server()
    sim = generator.generator_start(params=PARAMS, seed=5, actor=ADMIN, tenant_quota=64)
    start = sim.started_at
    _run(start, minutes=1)
    row = Simulation.objects.get(pk=1)
    assert row.next_index == len(_issued()) == row.requested > 0
    # The beat was down for an hour: what came due and ended meanwhile is skipped.
    result = generator.generator_tick(now=start + timedelta(minutes=61))
    assert result.skipped > 100 and result.requested < 20
    row.refresh_from_db()
    assert _issued() == _expected(5, row.next_index)[: len(_issued())]
    assert [i for i, _, _ in _issued()] == sorted(i for i, _, _ in _issued())


def test_each_lease_is_released_through_the_release_path_when_its_lifetime_ends(tasks):
    make_server()
    sim = generator.generator_start(params=PARAMS, seed=9, actor=ADMIN, tenant_quota=64)
    generator.generator_tick(now=sim.started_at + timedelta(seconds=30))
    gl = GeneratedLease.objects.order_by("release_at").first()
    assert gl is not None
    generator.generator_stop(actor=ADMIN)
    generator.generator_tick(now=gl.release_at - timedelta(seconds=1))
    assert Lease.objects.get(pk=gl.lease_id).state not in LEASE_TERMINAL | {LeaseState.RELEASING}
    generator.generator_tick(now=gl.release_at)
    lease = Lease.objects.get(pk=gl.lease_id)
    assert lease.state in (LeaseState.RELEASED, LeaseState.RELEASING)
    assert AuditEvent.objects.filter(target_type="tenants.lease", target_id=str(lease.pk),
                                     actor_text="workload-generator",
                                     verb__in=["tenants.lease.released", "tenants.lease.releasing"]).exists()
    assert GeneratedLease.objects.filter(released_at__isnull=True).count() == GeneratedLease.objects.count() - 1
    assert not Simulation.objects.get(pk=1).generator_running


def test_refused_requests_are_counted_with_the_reason(tasks):
    make_server()
    sim = generator.generator_start(params=Params(**{**PARAMS.__dict__, "sizes": ((8, 1.0),)}), seed=1,
                                    actor=ADMIN, tenant_quota=8)
    _run(sim.started_at, minutes=2)
    sim.refresh_from_db()
    assert sim.refused > 0 and "quota" in sim.last_error
    assert sim.requested + sim.refused == sim.next_index


def test_the_generator_refuses_a_real_fleet(settings):
    settings.SIMULATED_FLEET = False
    with pytest.raises(Exception, match="simulated fleet"):
        generator.generator_start(params=PARAMS, seed=1, actor=ADMIN)


@pytest.fixture
def sim_fleet(settings, tasks):
    """Two fast-booting simulated servers over gRPC and the in-process simulated cluster."""
    settings.AGENT_INSECURE = True
    forget_agents()
    fleet = SimFleet(2, platform="hgx-h100-8", variant="supermicro", insecure=True, accel=20000.0,
                     host_kernel="fixed", plug_mode="cold", isolate_gpus=True).start()
    register(fleet, actor=ADMIN)
    cluster_access.set_cluster(SimulatedCluster(sim_admin_nodes(fleet.endpoints, insecure=True), workload_seconds=0))
    yield fleet
    cluster_access.set_cluster(None)
    forget_agents()
    fleet.stop()


def _assert_invariants(pinned: str, *, history: bool) -> None:
    assert_no_gpu_in_two_open_allocations()
    assert_held_gpus_have_an_allocation()
    assert_allocations_are_partitions()
    if history:  # reads every GPU's audit trail: not after every tick
        assert_free_only_after_scrub_and_level(pinned)
    assert_active_partitions_disjoint()
    for lease in Lease.objects.filter(allocation__isnull=False).select_related("allocation"):
        if lease.state not in LEASE_TERMINAL:
            assert lease.allocation.is_open, f"{lease} {lease.state} on a returned allocation"


@pytest.mark.slow
def test_a_generator_run_on_the_simulated_fleet_keeps_every_invariant(sim_fleet, tasks):
    pinned = Gpu.objects.first().server.platform_spec.pinned_firmware
    params = Params(rate_per_min=10.0, sizes=((1, 4.0), (2, 3.0), (4, 2.0), (8, 1.0)), lifetime_min_s=20,
                    lifetime_max_s=60, tenants=3)
    sim = generator.generator_start(params=params, seed=3, actor=ADMIN, tenant_quota=16)
    start, seen = sim.started_at, set()
    for i in range(1, 13):  # two minutes in 10 s ticks
        generator.generator_tick(now=start + timedelta(seconds=10 * i))
        tasks.run(limit=500)
        _assert_invariants(pinned, history=i % 4 == 0)
        seen |= set(Lease.objects.values_list("state", flat=True))
    assert LeaseState.RUNNING in seen, seen
    generator.generator_stop(actor=ADMIN)
    generator.generator_tick(now=timezone.now() + timedelta(hours=1))  # every lifetime is over
    tasks.run(limit=2000)
    _assert_invariants(pinned, history=True)
    sim.refresh_from_db()
    assert sim.requested > 12 and sim.released == sim.requested
    assert not Lease.objects.exclude(state__in=LEASE_TERMINAL).exists()
    assert set(Gpu.objects.values_list("state", flat=True)) == {GpuState.FREE}
