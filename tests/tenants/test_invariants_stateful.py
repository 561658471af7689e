"""Hypothesis stateful test over the services, on a simulated fleet over real gRPC.

Random requests (1/2/4/8 GPUs), releases, drains, cordons, GPU drains, scrub failures, fabric
manager restarts (agent errors), quarantine clears and reconciler runs; after every step every
invariant of ARCHITECTURE.md holds:
1. no GPU in two open allocations (so in two unfinished leases);
2. a GPU is free only after a scrub and a level at the pinned firmware;
3. a lease's GPUs are exactly one partition of its server;
4. active partitions on a server are disjoint;
6. drained or cordoned servers get nothing new;
and a GPU fault during a lease shows on the lease (GpuFault), a fatal one ending it.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from console.audit import Actor
from console.statemachine import InvalidTransition
from fleet import cluster as cluster_access
from fleet import services as fleet_services
from fleet.agents import agent_for, forget_agents
from fleet.health import gpu_record_health
from fleet.inventory import server_register_from_inventory
from fleet.models import Gpu, Server
from fleet.placement_live import LivePlacementIndex, live_index
from fleet.reconciler import reconcile_fleet
from fleet.states import ServerState
from hardware.agent_client import AgentClient
from hardware.exceptions import AgentUnavailable
from hardware.types import HealthEvent, HealthKind
from simulator.cluster import SimulatedCluster, sim_admin_nodes
from simulator.fleet import SimFleet
from tenants import services
from tenants.models import Lease
from tenants.reconciler import reconcile_leases
from tenants.states import LEASE_HOLDS_GPUS, LEASE_TENANT_OWNS, LEASE_UNFINISHED, LeaseState
from tests.factories import TenantFactory
from tests.support.invariants import (
    assert_active_partitions_disjoint,
    assert_allocations_are_partitions,
    assert_free_only_after_scrub_and_level,
    assert_held_gpus_have_an_allocation,
    assert_no_gpu_in_two_open_allocations,
)

pytestmark = pytest.mark.slow
ACTOR = Actor.system("hypothesis", source="api")
IMAGE = "registry.example.com/lab/train:2"
TENANTS = ("alpha", "beta")
ACCEL = 20000.0
UNSCHEDULABLE = {ServerState.CORDONED, ServerState.DRAINING, ServerState.DRAINED}


def _register(fleet: SimFleet) -> None:
    for slot, endpoint in enumerate(fleet.endpoints.values(), start=1):
        with AgentClient(endpoint.address, node=endpoint.node, insecure=True) as client:
            inventory = client.get_inventory()
        server_register_from_inventory(inventory=inventory, rack="r1", slot=slot, agent_endpoint=endpoint.address,
                                       actor=ACTOR, source="simulator")


@pytest.fixture
def fleet(db, settings, tasks):
    """Fast-booting simulated servers (fixed host kernel, cold-plug) at a high clock rate."""
    settings.AGENT_INSECURE = True
    forget_agents()
    sim = SimFleet(2, platform="hgx-h100-8", variant="supermicro", insecure=True, accel=ACCEL,
                   host_kernel="fixed", plug_mode="cold", isolate_gpus=True).start()
    yield sim
    forget_agents()
    sim.stop()


def _reported_partitions(server):
    try:
        return agent_for(server).list_partitions()
    except AgentUnavailable:
        return None


def _reconcile() -> None:
    reconcile_fleet(stuck_after=timedelta(0))
    reconcile_leases(stuck_after=timedelta(0))


def test_invariants_hold_under_random_operations(fleet, tasks):
    pinned = "96.00.99.00.01"

    class FleetMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            # Every example starts from a fresh database state and fresh simulated hosts.
            live_index.reset()
            # Another worker process's placement index: stale against this one and the reverse.
            self.other_index = LivePlacementIndex()
            self.other_index.salt = 0
            # This transaction never commits: end each claim at once, as its commit would.
            self.other_index.done = lambda decision: self.other_index._finish(decision.token)
            self._atomic = transaction.atomic()
            self._atomic.__enter__()
            for host in fleet.hosts.values():
                host.reboot()  # isolate_gpus: it comes back with every 1-GPU partition active
            _register(fleet)
            for name in TENANTS:
                TenantFactory(name=name, state="ready", gpu_quota=64)
            cluster = SimulatedCluster(sim_admin_nodes(fleet.endpoints, insecure=True), workload_seconds=0)
            for name in TENANTS:
                cluster.ensure_tenancy(name)
            cluster_access.set_cluster(cluster)
            tasks.queued.clear()
            self.unschedulable_before: set[int] = set()

        def teardown(self):
            cluster_access.set_cluster(None)
            tasks.queued.clear()
            transaction.set_rollback(True)
            self._atomic.__exit__(None, None, None)

        # --- helpers -------------------------------------------------------------------
        def _step_start(self):
            self.unschedulable_before = set(
                Server.objects.filter(state__in=UNSCHEDULABLE).values_list("pk", flat=True)
            )
            self.step_started = timezone.now()

        def _settle(self):
            tasks.run(limit=400)

        # --- rules -----------------------------------------------------------------------
        @rule(n=st.sampled_from([1, 2, 4, 8]), tenant=st.sampled_from(TENANTS))
        def request(self, n, tenant):
            self._step_start()
            services.lease_request(tenant_name=tenant, image=IMAGE, gpu_count=n, actor=ACTOR)
            self._settle()

        @rule(n=st.sampled_from([1, 2, 4, 8]), tenant=st.sampled_from(TENANTS))
        def request_from_another_process(self, n, tenant):
            """Another API worker, deciding on its own index, which has not seen this one's leases."""
            self._step_start()
            with mock.patch.object(services, "live_index", self.other_index):
                services.lease_request(tenant_name=tenant, image=IMAGE, gpu_count=n, actor=ACTOR)
            self._settle()

        @rule(pick=st.integers(0, 63))
        def release(self, pick):
            # Draw an index, not from the database, so replays draw the same data.
            self._step_start()
            ids = list(Lease.objects.filter(state__in=LEASE_UNFINISHED).order_by("pk").values_list("pk", flat=True))
            if ids:
                services.lease_release(lease=Lease.objects.get(pk=ids[pick % len(ids)]), actor=ACTOR)
            self._settle()

        @rule(index=st.integers(0, 1), action=st.sampled_from(["cordon", "uncordon", "drain"]))
        def server_action(self, index, action):
            self._step_start()
            server = Server.objects.order_by("pk")[index]
            fn = {"cordon": fleet_services.server_cordon, "uncordon": fleet_services.server_uncordon,
                  "drain": fleet_services.server_drain}[action]
            with contextlib.suppress(InvalidTransition):
                fn(server=server, actor=ACTOR)
            self._settle()

        @rule(index=st.integers(0, 15), action=st.sampled_from(["drain", "undrain", "clear"]))
        def gpu_action(self, index, action):
            self._step_start()
            gpu = Gpu.objects.order_by("pk")[index]
            try:
                if action == "drain":
                    fleet_services.gpu_drain(gpu=gpu, actor=ACTOR)
                elif action == "undrain":
                    fleet_services.gpu_undrain(gpu=gpu, actor=ACTOR)
                else:
                    fleet_services.gpu_clear_quarantine(gpu=gpu, actor=ACTOR)
            except (InvalidTransition, services.Conflict):
                pass
            self._settle()

        @rule(index=st.integers(0, 15))
        def scrub_will_fail(self, index):
            gpu = Gpu.objects.select_related("server").order_by("pk")[index]
            agent_for(gpu.server).sim_admin().fail_next_scrub(gpu.module_id)

        @rule(index=st.integers(0, 1))
        def fabric_manager_restarts(self, index):
            # The 60 s window must not pass in the few real milliseconds before the reconciler runs.
            self._step_start()
            fleet.clock.set_acceleration(1.0)
            try:
                agent_for(Server.objects.order_by("pk")[index]).sim_admin().restart_fabric_manager()
                _reconcile()
            finally:
                fleet.clock.set_acceleration(ACCEL)
            self._settle()

        @rule()
        def reconcile(self):
            self._step_start()
            _reconcile()
            self._settle()

        @rule(pick=st.integers(0, 63), xid=st.sampled_from([48, 79, 94]))
        def gpu_faults(self, pick, xid):
            """An Xid on a GPU, as the node watcher records it: reset-class (48), lost (79) or
            restart-the-app (94)."""
            self._step_start()
            gpu = Gpu.objects.select_related("server").order_by("pk")[pick % 16]
            event = HealthEvent(hostname=gpu.server.hostname, module_id=gpu.module_id, kind=HealthKind.XID,
                                at=datetime.now(UTC), xid=xid, message="injected")
            gpu_record_health(server=gpu.server, event=event, actor=ACTOR)
            self._settle()

        # --- invariants ------------------------------------------------------------------
        @invariant()
        def no_gpu_in_two_open_allocations(self):
            assert_no_gpu_in_two_open_allocations()
            assert_held_gpus_have_an_allocation()

        @invariant()
        def free_only_after_scrub_and_level(self):
            assert_free_only_after_scrub_and_level(pinned)

        @invariant()
        def lease_gpus_are_one_partition(self):
            assert_allocations_are_partitions()
            for lease in Lease.objects.filter(state__in=LEASE_HOLDS_GPUS).select_related("allocation"):
                assert lease.allocation.is_open, f"{lease} {lease.state} on a returned allocation"

        @invariant()
        def gpu_faults_show_on_their_leases(self):
            for lease in Lease.objects.filter(allocation__fault_reason__gt="").select_related("allocation"):
                types = [c["type"] for c in lease.conditions]
                assert "GpuFault" in types, (lease, lease.state, lease.allocation.fault_reason)
                if lease.allocation.fault_fatal:
                    assert lease.state not in LEASE_TENANT_OWNS, (lease, lease.state)

        @invariant()
        def active_partitions_disjoint(self):
            assert_active_partitions_disjoint(_reported_partitions)

        @invariant()
        def unschedulable_servers_get_nothing_new(self):
            if not hasattr(self, "step_started"):
                return
            still = self.unschedulable_before & set(
                Server.objects.filter(state__in=UNSCHEDULABLE).values_list("pk", flat=True)
            )
            placed = Lease.objects.filter(placed_at__gte=self.step_started, allocation__server_id__in=still)
            assert not placed.exists(), list(placed)

        @invariant()
        def nothing_left_half_done(self):
            # With the task queue drained, no lease waits between orchestration steps.
            assert not tasks.queued
            assert not Lease.objects.filter(state__in=[LeaseState.PLACED, LeaseState.PARTITIONING]).exists()

    run_state_machine_as_test(
        FleetMachine,
        settings=settings(
            max_examples=int(os.environ.get("STATEFUL_EXAMPLES", "8")), stateful_step_count=12, deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
