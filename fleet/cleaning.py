"""The one cleaning path: one task per GPU carries it through scrub, then firmware level, then out.

Before the scrub the agent confirms that no VM still holds the GPU (`fleet.leftovers`: a holder a
teardown left behind is reported and torn down, never scrubbed around). Released allocations and
operators' scrubs, re-levels and quarantine clears all end here
(`fleet.tasks.gpu_clean` → `gpu_clean`), one task per GPU, so an 8-GPU release cleans its GPUs in
parallel. Each step is its own GPU state (`scrubbing`, then `leveling`); a GPU of an allocation
stays `leveling` once levelled until every GPU of the allocation is clean, and then they go free
together as the allocation is returned (`allocation_return_if_clean`; invariants 1, 2). An idle GPU
goes free (or drained) as soon as it is levelled.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from console.audit import Actor, audit_record
from console.operations import operation_finish, operation_log
from fleet import holders
from fleet.agents import agent_for
from fleet.allocations import allocation_return_if_clean, allocation_scrubbed, open_allocation_of
from fleet.leftovers import gpus_evict_leftovers
from fleet.models import Gpu
from fleet.states import GPU_MACHINE, GpuState
from hardware.exceptions import HardwareError

log = logging.getLogger(__name__)
G = GpuState


def gpu_clean(*, gpu_id: int, actor: Actor, operation_id: int | None = None) -> str:
    """Carry one GPU through scrub → level → free/drained, as far as its state says is left to do.

    Idempotent: a GPU already past a step skips it. A failed scrub or a firmware that cannot be
    levelled quarantines the GPU. Transient agent errors propagate (the task retries them).
    """
    gpu = Gpu.objects.select_related("server").get(pk=gpu_id)
    allocation = open_allocation_of(gpu)
    agent = agent_for(gpu.server)
    pinned = gpu.server.platform_spec.pinned_firmware
    if gpu.state == G.SCRUBBING:
        gpus_evict_leftovers(gpus=[gpu], actor=actor, parent=allocation)  # never scrub under a VM
        failure = _scrub(gpu, agent, operation_id)
        if failure:
            return _quarantine_failed(gpu, actor, failure, operation_id, allocation)
        GPU_MACHINE.transition(gpu, G.LEVELING, actor=actor, fields={"scrubbed_at": timezone.now()},
                               message="VRAM cleared", parent=allocation)
        if allocation is not None:
            allocation_scrubbed(allocation_id=allocation.pk)
    if gpu.state != G.LEVELING:
        return gpu.state
    if allocation is not None and _levelled_since(gpu, allocation.cleaning_at):
        allocation_return_if_clean(allocation=allocation, actor=actor)  # levelled before a crash
        return Gpu.objects.get(pk=gpu.pk).state
    operation_log(operation_id, f"firmware: level to {pinned}", progress=70)
    try:
        status = agent.level_firmware(gpu.module_id)
    except HardwareError as exc:
        if exc.retryable:
            raise
        return _quarantine_failed(gpu, actor, f"firmware level refused: {exc}", operation_id, allocation)
    if status.version != pinned:
        return _quarantine_failed(gpu, actor, f"firmware {status.version} after levelling, pinned {pinned}",
                                  operation_id, allocation)
    now = timezone.now()
    if allocation is not None:
        # An allocation's GPUs return to the pool together as the hold ends, so a GPU is never free
        # while an allocation still holds it.
        Gpu.objects.filter(pk=gpu.pk).update(leveled_at=now, firmware_version=status.version)
        audit_record(actor=actor, verb="fleet.gpu.leveled", target=gpu, parent=allocation,
                     message=f"firmware {status.version}", after={"firmware_version": status.version})
        allocation_return_if_clean(allocation=allocation, actor=actor)
        return Gpu.objects.get(pk=gpu.pk).state
    final = G.DRAINED if gpu.drain_requested else G.FREE
    GPU_MACHINE.transition(gpu, final, actor=actor, fields={"leveled_at": now, "firmware_version": status.version},
                           message=f"firmware {status.version}")
    operation_finish(operation_id, ok=True, line=f"{gpu} is {final}")
    if final == G.FREE:
        holders.capacity_freed_on_commit()
    return gpu.state


def _levelled_since(gpu: Gpu, since) -> bool:
    return gpu.leveled_at is not None and since is not None and gpu.leveled_at >= since


def _scrub(gpu: Gpu, agent, operation_id: int | None) -> str:
    """Reset the GPU and clear its VRAM through the agent. Returns why it failed, or ''."""
    operation_log(operation_id, "scrub: reset and clear VRAM", progress=10)
    last = None
    try:
        for progress in agent.scrub_gpu(gpu.module_id):
            last = progress
            operation_log(operation_id, f"scrub {progress.phase} {progress.percent:.0f}% {progress.detail}",
                          progress=10 + int(progress.percent * 0.5))
    except HardwareError as exc:
        if exc.retryable:
            raise
        return f"scrub refused: {exc}"
    if last is None or not last.ok:
        return f"scrub failed: {last.detail if last else 'no result'}"
    return ""


def _quarantine_failed(gpu: Gpu, actor: Actor, reason: str, operation_id: int | None, allocation) -> str:
    GPU_MACHINE.transition(gpu, G.QUARANTINED, actor=actor, fields={"quarantine_reason": reason}, message=reason,
                           parent=allocation)
    operation_finish(operation_id, ok=False, line=reason)
    if allocation is not None:
        allocation_scrubbed(allocation_id=allocation.pk)  # it is no longer being scrubbed either
        allocation_return_if_clean(allocation=allocation, actor=actor)
    return G.QUARANTINED
