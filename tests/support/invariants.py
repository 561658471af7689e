"""Invariant checks over allocations, shared by the concurrency, stateful and orchestration tests."""

from __future__ import annotations

from collections import Counter

from django.utils import timezone

from console.audit import Actor
from console.models import AuditEvent
from fleet.allocations import allocation_return_if_clean
from fleet.models import Allocation, AllocationGpu, Gpu, Partition, Server
from fleet.states import (
    ALLOCATION_MACHINE,
    ALLOCATION_OPEN,
    GPU_HELD,
    GPU_MACHINE,
    AllocationState,
    GpuState,
    PartitionState,
)

A, G = AllocationState, GpuState
RESET_CLASS = {"reset_gpu", "drain_and_reset", "drain_and_reboot_host"}


def assert_no_gpu_in_two_open_allocations() -> None:
    """Invariant 1: a GPU is held by at most one allocation that is not returned."""
    counts = Counter(AllocationGpu.objects.filter(held=True).values_list("gpu_id", flat=True))
    assert all(c == 1 for c in counts.values()), "a GPU is in two open allocations"
    for allocation in Allocation.objects.filter(state=A.RETURNED):
        assert not allocation.allocation_gpus.filter(held=True).exists(), f"{allocation} returned but holds GPUs"


def assert_allocations_are_partitions() -> None:
    """Invariant 3: an open allocation's GPUs are exactly one partition of one server."""
    for allocation in Allocation.objects.filter(state__in=ALLOCATION_OPEN).select_related("partition"):
        gpus = Gpu.objects.filter(allocation_gpus__allocation=allocation, allocation_gpus__held=True)
        modules = sorted(gpus.values_list("module_id", flat=True))
        assert modules == sorted(allocation.partition.module_ids), f"{allocation} GPUs are not its partition"
        assert set(gpus.values_list("server_id", flat=True)) == {allocation.server_id}
        assert allocation.partition.server_id == allocation.server_id


def assert_held_gpus_have_an_allocation() -> None:
    for gpu in Gpu.objects.filter(state__in=GPU_HELD):
        assert gpu.allocation_gpus.filter(held=True).exists(), f"{gpu} {gpu.state} without an allocation"


def assert_free_only_after_scrub_and_level(pinned: str) -> None:
    """Invariant 2: a free GPU holds nothing, is at the pinned firmware, and after its last lease and
    its last fault that needs a reset it went through scrub, then level, then out of cleaning."""
    for gpu in Gpu.objects.filter(state=G.FREE):
        assert not gpu.allocation_gpus.filter(held=True).exists()
        assert gpu.firmware_version == pinned
        events = list(AuditEvent.objects.filter(target_type="fleet.gpu", target_id=str(gpu.pk))
                      .order_by("id").values_list("verb", "after"))
        verbs = [verb for verb, _ in events]
        for i in reversed(range(len(events))):
            verb, after = events[i]
            if verb == "fleet.gpu.reserved" or (verb == "fleet.gpu.xid" and after["action"] in RESET_CLASS):
                tail = verbs[i:]
                assert "fleet.gpu.scrubbing" in tail, tail
                tail = tail[tail.index("fleet.gpu.scrubbing"):]
                assert "fleet.gpu.leveling" in tail, tail
                tail = tail[tail.index("fleet.gpu.leveling"):]
                assert {"fleet.gpu.leveled", "fleet.gpu.free", "fleet.gpu.drained"} & set(tail), tail


def assert_active_partitions_disjoint(reported_of=None) -> None:
    """Invariant 4: active partitions of a server share no GPU, in the database and, given
    `reported_of(server)` (what its fabric manager lists, or None when it does not answer), there."""
    for server in Server.objects.all():
        seen: set[int] = set()
        for partition in Partition.objects.filter(server=server, state=PartitionState.ACTIVE):
            assert not seen & set(partition.module_ids), f"{server}: overlap at {partition}"
            seen |= set(partition.module_ids)
        seen = set()
        for p in (reported_of(server) or []) if reported_of else []:
            if p.active:
                assert not seen & set(p.gpu_module_ids), f"{server}: fabric manager overlap at {p}"
                seen |= set(p.gpu_module_ids)


def clean_without_agents(allocation: Allocation, actor: Actor) -> None:
    """What the cleaning path does once every agent scrubbed and levelled every GPU (no agents)."""
    allocation.refresh_from_db()
    for to in (A.RELEASING, A.CLEANING):
        ALLOCATION_MACHINE.transition(allocation, to, actor=actor)
    gpus = Gpu.objects.filter(allocation_gpus__allocation=allocation, allocation_gpus__held=True)
    GPU_MACHINE.transition_many(gpus.filter(state__in=GPU_HELD), G.SCRUBBING, actor=actor)
    GPU_MACHINE.transition_many(gpus.filter(state=G.SCRUBBING), G.LEVELING, actor=actor,
                                fields={"scrubbed_at": timezone.now()})
    gpus.filter(state=G.LEVELING).update(leveled_at=timezone.now())
    assert allocation_return_if_clean(allocation=allocation, actor=actor)
