"""Invariant checks over allocations, shared by the concurrency, stateful and orchestration tests."""

from __future__ import annotations

from collections import Counter

from django.utils import timezone

from console.audit import Actor
from fleet.allocations import allocation_return_if_clean
from fleet.models import Allocation, AllocationGpu, Gpu
from fleet.states import ALLOCATION_MACHINE, ALLOCATION_OPEN, GPU_HELD, GPU_MACHINE, AllocationState, GpuState

A, G = AllocationState, GpuState


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
