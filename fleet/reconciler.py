"""Fleet's periodic reconciler: partitions (database vs the agents' fabric managers), the device
plugins' lease books, and GPUs and allocations a lost task or a crash left behind.

Runs as a singleton (named lock) every RECONCILE_EVERY_S; every repair is a service call, audited
with source `reconciler`. Level-based: a second pass in a row changes nothing. The fabric manager's
restart is replayed at once from its event on the agent's stream (`fleet.fabric_replay`); the
replay here is the backstop for a missed event.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from console import dispatch
from console.audit import Actor
from console.locks import try_lock
from console.models import Operation, Source
from fleet import services
from fleet.agents import agent_for
from fleet.allocations import allocation_return_if_clean
from fleet.fabric_replay import fabric_manager_replay
from fleet.lease_book import lease_book_push
from fleet.models import Allocation, Gpu, Server
from fleet.states import GPU_CLEANING, GPU_HELD, GPU_MACHINE, AllocationState, GpuState, PartitionState, ServerState
from hardware.exceptions import HardwareError

log = logging.getLogger(__name__)
ACTOR = Actor.system("fleet-reconciler", source=Source.RECONCILER)
A, G, P = AllocationState, GpuState, PartitionState
# Allocations whose partition must be active on the fabric manager.
PARTITION_NEEDED = (A.ACTIVE, A.FAULTED)


def reconcile_fleet(*, stuck_after: timedelta | None = None) -> dict:
    """One pass over the fleet. Returns counts of what it repaired. `stuck_after`: how long a step
    may take before it is resumed (default settings.RECONCILE_STUCK_AFTER_S)."""
    with try_lock("fleet-reconciler") as held:
        if not held:
            return {"skipped": 1}
        stats: Counter[str] = Counter()
        if stuck_after is None:
            stuck_after = timedelta(seconds=settings.RECONCILE_STUCK_AFTER_S)
        _agents(stats)
        _orphan_gpus(stats)
        _stuck_allocations(stats, stuck_after)
        _stuck_idle_cleaning(stats, stuck_after)
        for server in Server.objects.filter(state=ServerState.DRAINING):
            stats["servers_drained"] += services.server_check_drained(server=server, actor=ACTOR)
        return dict(stats)


def _agents(stats: Counter) -> None:
    needed: dict[int, dict[int, Allocation]] = {}
    for allocation in Allocation.objects.filter(state__in=PARTITION_NEEDED, partition__state=P.ACTIVE).select_related(
        "partition"
    ):
        needed.setdefault(allocation.server_id, {})[allocation.partition.partition_id] = allocation
    for server in Server.objects.exclude(agent_endpoint=""):
        agent = agent_for(server)
        try:
            reported = {p.partition_id: p.active for p in agent.list_partitions()}
        except HardwareError:
            reported = _replay(server, agent, stats)
            if reported is None:
                services.server_mark_reachable(server=server, actor=ACTOR, reachable=False)
                stats["servers_unreachable"] += 1
                continue
        services.server_mark_reachable(server=server, actor=ACTOR, reachable=True)
        lease_book_push(server=server, quiet=True)
        for partition_id, allocation in needed.get(server.pk, {}).items():
            if reported.get(partition_id):
                continue
            try:  # through the partition machine: recorded as the fabric manager says, then activated
                services.partition_activate(server=server, partition_id=partition_id, actor=ACTOR, parent=allocation)
                reported[partition_id] = True
                stats["partitions_reactivated"] += 1
            except HardwareError as exc:
                log.warning("%s: cannot re-activate partition %s: %s", server, partition_id, exc)
        stats["partitions_recorded"] += services.partitions_record_reported(
            server=server, reported=reported, actor=ACTOR
        )


def _replay(server: Server, agent, stats: Counter) -> dict[int, bool] | None:
    """A fabric manager that refuses to list may be waiting for its activated list after a restart."""
    try:
        fabric_manager_replay(server=server, actor=ACTOR)
        stats["fabric_managers_restored"] += 1
        return {p.partition_id: p.active for p in agent.list_partitions()}
    except HardwareError:
        return None


def _orphan_gpus(stats: Counter) -> None:
    """GPUs in a held state that no open allocation holds (a crash between steps): clean them
    (scrub + level), never free them."""
    orphans = Gpu.objects.filter(state__in=GPU_HELD).exclude(allocation_gpus__held=True)
    for gpu in orphans:
        GPU_MACHINE.transition(gpu, G.SCRUBBING, actor=ACTOR, message="held by no allocation: scrub and level")
        dispatch.enqueue("gpu_clean", gpu.pk, None)
        stats["gpus_orphaned"] += 1


def _stuck_allocations(stats: Counter, stuck_after: timedelta) -> None:
    cutoff = timezone.now() - stuck_after
    for allocation_id in Allocation.objects.filter(state=A.RELEASING, releasing_at__lt=cutoff).values_list(
        "pk", flat=True
    ):
        dispatch.enqueue("allocation_release", allocation_id)
        stats["allocations_release_resumed"] += 1
    for allocation in Allocation.objects.filter(state=A.CLEANING, cleaning_at__lt=cutoff):
        if allocation_return_if_clean(allocation=allocation, actor=ACTOR):
            stats["allocations_returned"] += 1
            continue
        for gpu_id in Gpu.objects.filter(
            allocation_gpus__allocation=allocation, allocation_gpus__held=True, state__in=GPU_CLEANING
        ).filter(Q(leveled_at__isnull=True) | Q(leveled_at__lt=allocation.cleaning_at)).values_list("pk", flat=True):
            dispatch.enqueue("gpu_clean", gpu_id, None)
            stats["gpus_cleaning_resumed"] += 1


def _stuck_idle_cleaning(stats: Counter, stuck_after: timedelta) -> None:
    """An operator's scrub or level whose task was lost: run it again (no operation still running)."""
    busy = Operation.objects.filter(status__in=Operation.UNFINISHED, target_type="fleet.gpu").values_list(
        "target_id", flat=True
    )
    cutoff = timezone.now() - stuck_after
    idle_cleaning = Gpu.objects.filter(state__in=GPU_CLEANING).exclude(allocation_gpus__held=True).exclude(
        pk__in=[int(t) for t in busy if t.isdigit()]
    )
    for gpu in idle_cleaning:
        if gpu.leveled_at and gpu.leveled_at > cutoff:
            continue
        dispatch.enqueue("gpu_clean", gpu.pk, None)
        stats["gpus_cleaning_resumed"] += 1
