"""Allocation services: fleet's hold on one partition's GPUs, from claim to return.

    reserved ─▶ activating ─▶ active ─▶ releasing ─▶ cleaning ─▶ returned
        └──────────┴────────────┴──▶ faulted ─┘                (abandoned: returned, GPUs quarantined)

`allocation_claim` reserves the GPUs (compare-and-set, never waits; invariant 1 in the database
through AllocationGpu's partial unique constraint). `allocation_activate` makes the partition
active on the fabric manager. `allocation_release` deactivates it and starts one clean task per
GPU (`fleet.cleaning.gpu_clean`: scrub, then level firmware, each its own GPU state); the last
GPU to finish returns the allocation, and only then are its GPUs free (invariant 2). A GPU fault
during the hold (`allocation_fault`) is recorded on the allocation and told to its holder.

Holders are opaque (`lease/42`); they hear of every committed change through `fleet.holders`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.db import transaction

from console import dispatch
from console.audit import Actor, audit_record
from console.db import insert_many
from console.statemachine import Guard
from fleet import holders
from fleet.lease_book import lease_book_push
from fleet.leftovers import gpus_evict_leftovers
from fleet.models import Allocation, AllocationGpu, Gpu, Server
from fleet.services import partition_activate, partition_release, server_check_drained
from fleet.snapshot import SCHEDULABLE_SERVER_STATES
from fleet.states import (
    ALLOCATION_MACHINE,
    ALLOCATION_USABLE,
    GPU_HELD,
    GPU_MACHINE,
    GPU_OUT,
    AllocationState,
    GpuState,
)

log = logging.getLogger(__name__)
A, G = AllocationState, GpuState


def allocation_claim(
    *,
    server: Server,
    partition_pk: int,
    gpu_ids: Sequence[int],
    holder: str,
    actor: Actor,
    owner: str = "",
    claim_name: str = "",
    consumer_namespace: str = "",
    consumer_name: str = "",
) -> Allocation | None:
    """Reserve the GPUs `gpu_ids` (one partition of `server`) for `holder`, all or none, without
    waiting, in the caller's transaction: None when any of them is not free, is being claimed by
    another transaction, or the server is not schedulable (invariants 1, 6); the caller then rolls
    back. `server` may be a stand-in with its pk and hostname (all the claim and its audit read)."""
    allocation = Allocation(
        server_id=server.pk, partition_id=partition_pk, holder=holder, owner=owner, claim_name=claim_name,
        consumer_namespace=consumer_namespace, consumer_name=consumer_name,
    )
    # Inserted first so the GPUs' events name it; a lost claim rolls the row back with the rest.
    insert_many([allocation])
    gpus = GPU_MACHINE.claim_many(
        Gpu, list(gpu_ids), G.RESERVED, expect=G.FREE, actor=actor,
        guard=Guard(Server, server.pk, tuple(SCHEDULABLE_SERVER_STATES)),
        parent=allocation, related={"server": server},
    )
    if gpus is None:
        return None
    insert_many([AllocationGpu(allocation=allocation, gpu=g, held=True) for g in gpus])
    audit_record(actor=actor, verb="fleet.allocation.reserved", target=allocation, after={
        "state": A.RESERVED, "holder": holder, "server": server.pk, "partition": partition_pk,
        "gpus": [g.module_id for g in gpus],
    }, message=f"{holder} on {server.hostname} ({','.join(str(g.module_id) for g in gpus)})")
    allocation.server = server
    return allocation


def allocation_activate(*, allocation: Allocation, actor: Actor) -> Allocation:
    """Make the allocation's partition active on the server's fabric manager; its GPUs are then in
    use by the holder, and the node's device plugin is told. Idempotent."""
    allocation = _fresh(allocation)
    if allocation.state == A.RESERVED:
        _transition(allocation, A.ACTIVATING, actor=actor, notify=False)
    if allocation.state != A.ACTIVATING:
        return allocation
    partition_activate(server=allocation.server, partition_id=allocation.partition.partition_id, actor=actor,
                       parent=allocation)
    with transaction.atomic():
        GPU_MACHINE.transition_many(_gpus(allocation).filter(state=G.RESERVED), G.IN_USE, actor=actor,
                                    parent=allocation)
        _transition(allocation, A.ACTIVE, actor=actor, message=f"partition {allocation.partition.partition_id}",
                    notify=False)
    _push_book(allocation.server)
    return allocation


def allocation_release(*, allocation: Allocation, actor: Actor) -> Allocation:
    """The holder is done with the GPUs (its workload is gone): deactivate the partition and clean
    every GPU, one task each, in parallel. Idempotent: a cleaning or returned allocation is left to
    its clean tasks (the reconciler resumes a lost one)."""
    allocation = _fresh(allocation)
    if allocation.state in (*ALLOCATION_USABLE, A.FAULTED):
        _transition(allocation, A.RELEASING, actor=actor, notify=False)
    if allocation.state != A.RELEASING:
        return allocation
    # The holder's workload is gone; no VM of it may still hold a GPU when the partition goes.
    gpus_evict_leftovers(gpus=_gpus(allocation).select_related("server"), actor=actor, parent=allocation)
    partition_release(server=allocation.server, partition_id=allocation.partition.partition_id, actor=actor,
                      parent=allocation)
    with transaction.atomic():
        allocation = Allocation.objects.select_for_update().select_related("server", "partition").get(
            pk=allocation.pk)
        if allocation.state != A.RELEASING:
            return allocation
        dirty = GPU_MACHINE.transition_many(_gpus(allocation).filter(state__in=GPU_HELD), G.SCRUBBING,
                                            actor=actor, parent=allocation, message="released: scrub and level")
        _transition(allocation, A.CLEANING, actor=actor, locked=True)
        for gpu in dirty:
            dispatch.on_commit("gpu_clean", gpu.pk, None)
        if not dirty:  # every GPU was already out (quarantined, offline): nothing to clean
            allocation_return_if_clean(allocation=allocation, actor=actor)
    _push_book(allocation.server)
    return allocation


def allocation_return_if_clean(*, allocation: Allocation, actor: Actor) -> bool:
    """Return a cleaning allocation once every GPU is levelled since the cleaning began (or out:
    quarantined, offline): its levelled GPUs go free (drained where a drain was asked) in the same
    transaction as the hold ends (invariants 1, 2). True when it returned now."""
    with transaction.atomic():
        allocation = Allocation.objects.select_for_update().select_related("server").get(pk=allocation.pk)
        if allocation.state != A.CLEANING:
            return False
        gpus = list(_gpus(allocation))
        since = allocation.cleaning_at
        if any(not (g.state in GPU_OUT or _levelled_since(g, since)) for g in gpus):
            return False
        levelled = _gpus(allocation).filter(state=G.LEVELING)
        GPU_MACHINE.transition_many(levelled.filter(drain_requested=True), G.DRAINED, actor=actor,
                                    parent=allocation)
        freed = GPU_MACHINE.transition_many(levelled.filter(drain_requested=False), G.FREE, actor=actor,
                                            parent=allocation)
        AllocationGpu.objects.filter(allocation=allocation, held=True).update(held=False)
        _transition(allocation, A.RETURNED, actor=actor, locked=True)
        if freed:
            holders.capacity_freed_on_commit()
    _push_book(allocation.server)
    server_check_drained(server=allocation.server, actor=actor)
    return True


def allocation_fault(*, allocation: Allocation, actor: Actor, reason: str, fatal: bool) -> Allocation:
    """A GPU of the allocation faulted: recorded on it and told to its holder. `fatal`: the Xid
    catalog says the workload cannot go on (the GPU is lost, needs a reset, or is quarantined);
    the holder ends its hold. Otherwise it may keep the GPUs. A fault after release is moot."""
    allocation = _fresh(allocation)
    if allocation.state not in (*ALLOCATION_USABLE, A.FAULTED):
        return allocation
    with transaction.atomic():
        allocation = Allocation.objects.select_for_update().get(pk=allocation.pk)
        fatal = fatal or allocation.fault_fatal
        reason = reason[:2000]
        if allocation.state == A.FAULTED:
            Allocation.objects.filter(pk=allocation.pk).update(fault_reason=reason, fault_fatal=fatal)
            audit_record(actor=actor, verb="fleet.allocation.fault", target=allocation, message=reason,
                         after={"fatal": fatal})
            allocation.fault_reason, allocation.fault_fatal = reason, fatal
            holders.notify_on_commit(_change(allocation, reason))
        elif allocation.state in ALLOCATION_USABLE:
            _transition(allocation, A.FAULTED, actor=actor, locked=True, message=reason,
                        fields={"fault_reason": reason, "fault_fatal": fatal})
    return allocation


def allocation_abandon(*, allocation: Allocation, actor: Actor, reason: str) -> Allocation:
    """The holder failed and cannot say what its workload left on the GPUs: quarantine them (an
    operator clears them, which scrubs and levels) and end the hold. Idempotent."""
    with transaction.atomic():
        allocation = Allocation.objects.select_for_update().get(pk=allocation.pk)
        if allocation.state == A.RETURNED:
            return allocation
        GPU_MACHINE.transition_many(
            _gpus(allocation).exclude(state__in=GPU_OUT), G.QUARANTINED, actor=actor,
            fields={"quarantine_reason": reason[:2000]}, parent=allocation, message=reason,
        )
        AllocationGpu.objects.filter(allocation=allocation, held=True).update(held=False)
        _transition(allocation, A.RETURNED, actor=actor, locked=True, message=f"abandoned: {reason}"[:2000])
    _push_book(allocation.server)
    return allocation


def allocation_scrubbed(*, allocation_id: int) -> None:
    """One of the allocation's GPUs finished its scrub: once none is left scrubbing, tell the holder
    (after commit); its `scrubbing` step waits for exactly that."""
    allocation = Allocation.objects.filter(pk=allocation_id).first()
    if allocation is not None and not _gpus(allocation).filter(state=G.SCRUBBING).exists():
        holders.notify_on_commit(_change(allocation))


# ----------------------------------------------------------------------------- helpers
def open_allocation_of(gpu: Gpu) -> Allocation | None:
    """The allocation that holds `gpu` now, if any."""
    row = AllocationGpu.objects.filter(gpu=gpu, held=True).select_related("allocation").first()
    return row.allocation if row else None


def _gpus(allocation: Allocation):
    return Gpu.objects.filter(allocation_gpus__allocation=allocation)


def _levelled_since(gpu: Gpu, since) -> bool:
    return gpu.state == G.LEVELING and gpu.leveled_at is not None and (since is None or gpu.leveled_at >= since)


def _fresh(allocation: Allocation) -> Allocation:
    return Allocation.objects.select_related("server", "partition").get(pk=allocation.pk)


def _change(allocation: Allocation, reason: str = "") -> holders.AllocationChange:
    return holders.AllocationChange(allocation.pk, allocation.holder, allocation.state,
                                    reason or allocation.fault_reason)


def _transition(allocation: Allocation, to: str, *, actor: Actor, locked: bool = False, message: str = "",
                fields: dict | None = None, notify: bool = True) -> None:
    """The allocation's state change (audited), and its holder told after commit. `notify=False`
    for the steps a holder's own call makes and waits for (activation, the start of a release)."""
    with transaction.atomic():
        changed = ALLOCATION_MACHINE.transition(allocation, to, actor=actor, locked=locked, message=message,
                                                fields=fields)
        if changed and notify:
            holders.notify_on_commit(_change(allocation))


def _push_book(server: Server) -> None:
    """The node's device-plugin lease book after a change (the fleet reconciler is the backstop)."""
    lease_book_push(server=server, quiet=True)

