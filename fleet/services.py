"""Fleet services: the only writers of servers, GPUs and partitions.

Every service takes keyword-only arguments with an explicit `actor`, owns its transaction, changes
state only through the machines of fleet/states.py (which audit and broadcast on commit), and asks
`hardware` (through fleet.agents) for anything that touches a node.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from console import dispatch
from console.audit import Actor, audit_record
from console.errors import Conflict
from console.models import Operation
from console.operations import operation_cancel, operation_finish, operation_log, operation_start
from fleet.agents import agent_for
from fleet.models import Gpu, Partition, Server
from fleet.states import (
    GPU_CLEANING,
    GPU_HELD,
    GPU_MACHINE,
    PARTITION_MACHINE,
    SERVER_MACHINE,
    GpuState,
    PartitionState,
    ServerState,
)
from hardware.exceptions import HardwareError

log = logging.getLogger(__name__)
G, S, P = GpuState, ServerState, PartitionState


# ----------------------------------------------------------------------------- servers
def server_cordon(*, server: Server, actor: Actor) -> Server:
    """No new leases on this server; running leases continue (invariant 6)."""
    SERVER_MACHINE.transition(server, S.CORDONED, actor=actor, message="cordoned")
    dispatch.on_commit("node_set_schedulable", server.pk, False)
    return server


def server_uncordon(*, server: Server, actor: Actor) -> Server:
    """Back to schedulable (also cancels a drain)."""
    SERVER_MACHINE.transition(server, S.ACTIVE, actor=actor, message="uncordoned")
    dispatch.on_commit("node_set_schedulable", server.pk, True)
    return server


def server_drain(*, server: Server, actor: Actor, parent: Operation | None = None) -> Operation:
    """Stop new leases; running ones continue; the server becomes `drained` once nothing runs.
    With `parent` (servers_drain), its operation is one part of that one."""
    with transaction.atomic():
        SERVER_MACHINE.transition(server, S.DRAINING, actor=actor, message="drain requested")
        op = operation_start(kind="server.drain", target=server, actor=actor, line="drain started", parent=parent)
    dispatch.on_commit("node_set_schedulable", server.pk, False)
    server_check_drained(server=server, actor=actor, operation_id=op.pk)
    return op


def servers_drain(*, servers: list[Server], actor: Actor) -> Operation:
    """Drain several servers as one operation: each server's drain is a part of it, its progress
    is theirs, and cancelling it cancels every drain still running (those servers stay cordoned)."""
    names = ", ".join(s.hostname for s in servers)
    with transaction.atomic():
        group = operation_start(kind="servers.drain", target=servers[0], actor=actor,
                                target_repr=f"{len(servers)} servers: {names}", line=f"drain of {names} started")
        for server in servers:
            server_drain(server=server, actor=actor, parent=group)
    return group


def server_drain_cancel(*, server: Server, actor: Actor) -> Server:
    """Stop a drain: the server stays cordoned (no new leases; running ones continue) and its drain
    operation ends `cancelled`. Refused unless the server is draining."""
    with transaction.atomic():
        server = Server.objects.select_for_update().get(pk=server.pk)
        if server.state != S.DRAINING:
            raise Conflict(f"{server} is {server.state}, not draining: there is no drain to cancel")
        SERVER_MACHINE.transition(server, S.CORDONED, actor=actor, message="drain cancelled: stays cordoned",
                                  locked=True)
        for op in Operation.objects.select_for_update().filter(
            kind="server.drain", target_type="fleet.server", target_id=str(server.pk),
            status__in=Operation.UNFINISHED,
        ):
            operation_cancel(op.pk, line=f"cancelled by {actor.name}: server stays cordoned")
    return server


def server_check_drained(*, server: Server, actor: Actor, operation_id: int | None = None) -> bool:
    """Move a draining server to `drained` when none of its GPUs is held by a lease or being cleaned."""
    server.refresh_from_db(fields=["state"])
    if server.state != S.DRAINING:
        return server.state == S.DRAINED
    busy = server.gpus.filter(state__in=[*GPU_HELD, *GPU_CLEANING]).count()
    if operation_id is None:
        op = Operation.objects.filter(
            kind="server.drain", target_id=str(server.pk), status__in=Operation.UNFINISHED
        ).first()
        operation_id = op.pk if op else None
    total = server.gpus.count() or 1
    if busy:
        operation_log(operation_id, f"{busy} GPU(s) still busy", progress=int(100 * (total - busy) / total))
        return False
    SERVER_MACHINE.transition(server, S.DRAINED, actor=actor, message="drained: no lease left")
    operation_finish(operation_id, ok=True, line="server drained")
    return True


def server_mark_reachable(*, server: Server, actor: Actor, reachable: bool) -> None:
    """Record what the reconciler saw of the agent."""
    if reachable:
        if server.state == S.UNREACHABLE:
            SERVER_MACHINE.transition(server, S.ACTIVE, actor=actor, message="agent answers again")
        Server.objects.filter(pk=server.pk).update(last_seen_at=timezone.now())
    elif server.state != S.UNREACHABLE:
        SERVER_MACHINE.transition(server, S.UNREACHABLE, actor=actor, message="agent does not answer")


# ----------------------------------------------------------------------------- GPUs (operator)
def gpu_drain(*, gpu: Gpu, actor: Actor, reset: bool = False) -> Gpu:
    """Take a GPU out of the pool: at once when idle; after its allocation is cleaned when it is held.

    `reset`: the GPU faulted and needs a reset (a reset-class Xid): an idle one goes through the
    scrub-and-level path on its way to drained, so it is never free again without one."""
    with transaction.atomic():
        gpu = Gpu.objects.select_for_update().get(pk=gpu.pk)
        if gpu.state in (G.RESERVED, G.IN_USE):
            GPU_MACHINE.transition(gpu, G.DRAINING, actor=actor, fields={"drain_requested": True},
                                   message="drain after the current lease")
        elif gpu.state in GPU_CLEANING:
            Gpu.objects.filter(pk=gpu.pk).update(drain_requested=True)
            audit_record(actor=actor, verb="fleet.gpu.drain_requested", target=gpu,
                         message="will be drained once cleaned")
        elif reset and gpu.state in (G.FREE, G.DRAINED):
            GPU_MACHINE.transition(gpu, G.SCRUBBING, actor=actor, fields={"drain_requested": True},
                                   message="faulted: reset (scrub) and level, then drained")
            dispatch.on_commit("gpu_clean", gpu.pk, None)
        else:
            GPU_MACHINE.transition(gpu, G.DRAINED, actor=actor, fields={"drain_requested": True})
    gpu.refresh_from_db()
    return gpu


def gpu_undrain(*, gpu: Gpu, actor: Actor) -> Gpu:
    """Return a drained GPU to the pool. Refused when it faulted since its last scrub and level: it
    must go through them first (`gpu_scrub`), so no GPU is free without a reset after a fault."""
    with transaction.atomic():
        gpu = Gpu.objects.select_for_update().get(pk=gpu.pk)
        if gpu.state == G.DRAINED and needs_clean(gpu):
            raise Conflict(f"{gpu} faulted (Xid {gpu.last_xid}) since its last scrub and level; scrub it first")
        GPU_MACHINE.transition(gpu, G.FREE, actor=actor, fields={"drain_requested": False}, message="undrained",
                               locked=True)
    return gpu


def needs_clean(gpu: Gpu) -> bool:
    """Whether the GPU faulted (an Xid) after its last scrub, or was scrubbed but not levelled since."""
    if gpu.last_xid_at and (gpu.scrubbed_at is None or gpu.scrubbed_at < gpu.last_xid_at):
        return True
    return bool(gpu.scrubbed_at and (gpu.leveled_at is None or gpu.leveled_at < gpu.scrubbed_at))


def gpu_quarantine(*, gpu: Gpu, actor: Actor, reason: str) -> Gpu:
    """Keep a GPU from everyone until an operator clears it (which scrubs and levels it)."""
    if not reason.strip():
        raise Conflict("a quarantine needs a reason")
    GPU_MACHINE.transition(gpu, G.QUARANTINED, actor=actor, fields={"quarantine_reason": reason}, message=reason)
    return gpu


def gpu_clear_quarantine(*, gpu: Gpu, actor: Actor) -> Operation:
    """Clearing a quarantine goes through a scrub and a firmware level before the GPU is free."""
    return _gpu_start_clean(gpu=gpu, actor=actor, to=G.SCRUBBING, kind="gpu.clear_quarantine",
                            expect=(G.QUARANTINED,))


def gpu_scrub(*, gpu: Gpu, actor: Actor) -> Operation:
    """Scrub (reset + clear VRAM) and level an idle GPU."""
    return _gpu_start_clean(gpu=gpu, actor=actor, to=G.SCRUBBING, kind="gpu.scrub",
                            expect=(G.FREE, G.DRAINED, G.OFFLINE))


def gpu_level_firmware(*, gpu: Gpu, actor: Actor) -> Operation:
    """Check the firmware of an idle GPU against the platform's pinned version, re-flash if it differs."""
    return _gpu_start_clean(gpu=gpu, actor=actor, to=G.LEVELING, kind="gpu.level_firmware",
                            expect=(G.FREE, G.DRAINED))


def _gpu_start_clean(*, gpu: Gpu, actor: Actor, to: str, kind: str, expect: tuple[str, ...]) -> Operation:
    with transaction.atomic():
        gpu = Gpu.objects.select_for_update().get(pk=gpu.pk)
        if gpu.state not in expect:
            raise Conflict(f"{gpu} is {gpu.state}; {kind.split('.')[-1].replace('_', ' ')} needs "
                           f"{' or '.join(expect)}")
        keep_drained = gpu.state == G.DRAINED or gpu.drain_requested
        GPU_MACHINE.transition(gpu, to, actor=actor, fields={"drain_requested": keep_drained,
                                                             "quarantine_reason": ""})
        op = operation_start(kind=kind, target=gpu, actor=actor, line=f"{kind} requested")
        dispatch.on_commit("gpu_clean", gpu.pk, op.pk)
    return op


# ----------------------------------------------------------------------------- partitions
def partition_activate(*, server: Server, partition_id: int, actor: Actor, parent=None) -> Partition:
    """Make `partition_id` active on the server's fabric manager, deactivating the idle partitions
    inside it first (the fabric manager never does that for us). Idempotent."""
    agent = agent_for(server)
    reported = _sync_partitions(server, agent, actor, parent)
    partition = server.partitions.get(partition_id=partition_id)
    if reported.get(partition_id):
        return partition
    inside = set(partition.module_ids)
    for other in server.partitions.filter(state=P.ACTIVE).exclude(pk=partition.pk):
        if set(other.module_ids) <= inside:
            _partition_deactivate(other, agent, actor, parent)
    PARTITION_MACHINE.transition(partition, P.ACTIVATING, actor=actor, parent=parent)
    try:
        agent.activate_partition(partition_id)
    except HardwareError as exc:
        _settle(partition, False, actor, parent, message=f"activation failed: {exc}")
        raise
    PARTITION_MACHINE.transition(partition, P.ACTIVE, actor=actor, parent=parent)
    return partition


def partition_release(*, server: Server, partition_id: int, actor: Actor, parent=None) -> None:
    """Deactivate a lease's partition (its VM is gone) and re-activate its GPUs' 1-GPU partitions,
    the fleet's idle baseline (every GPU isolated, as in seed 001). Idempotent."""
    agent = agent_for(server)
    _sync_partitions(server, agent, actor, parent)
    partition = server.partitions.get(partition_id=partition_id)
    if partition.size == 1:
        return
    if partition.state == P.ACTIVE:
        _partition_deactivate(partition, agent, actor, parent)
    inside = set(partition.module_ids)
    singles = [p.pk for p in server.partitions.filter(size=1, state=P.INACTIVE) if p.module_ids[0] in inside]
    if not singles:
        return
    # One write per step for all of them (an 8-GPU release re-activates eight); the fabric manager
    # takes them one by one. A failure leaves the rest `activating`: the next read settles them.
    rows = PARTITION_MACHINE.transition_many(Partition.objects.filter(pk__in=singles), P.ACTIVATING, actor=actor,
                                             parent=parent)
    done = []
    try:
        for single in rows:
            agent.activate_partition(single.partition_id)
            done.append(single.pk)
    finally:
        PARTITION_MACHINE.transition_many(Partition.objects.filter(pk__in=done), P.ACTIVE, actor=actor, parent=parent)


def _sync_partitions(server: Server, agent, actor: Actor, parent) -> dict[int, bool]:
    """Read the fabric manager's list and record it on our rows before acting on them."""
    reported = {p.partition_id: p.active for p in agent.list_partitions()}
    for partition in server.partitions.all():
        if partition.partition_id in reported:
            _settle(partition, reported[partition.partition_id], actor, parent)
    return reported


def _settle(partition: Partition, active: bool, actor: Actor, parent, message: str = "") -> None:
    """Record what the fabric manager says of a partition, whatever state our row was left in."""
    want = P.ACTIVE if active else P.INACTIVE
    if partition.state == want:
        return
    if not PARTITION_MACHINE.allowed(partition.state, want):
        PARTITION_MACHINE.transition(partition, P.FAILED, actor=actor, parent=parent, message=message)
    PARTITION_MACHINE.transition(partition, want, actor=actor, parent=parent,
                                 message=message or "as the fabric manager reports")


def _partition_deactivate(partition: Partition, agent, actor: Actor, parent) -> None:
    PARTITION_MACHINE.transition(partition, P.DEACTIVATING, actor=actor, parent=parent)
    try:
        agent.deactivate_partition(partition.partition_id)
    except HardwareError as exc:
        _settle(partition, True, actor, parent, message=f"deactivation failed: {exc}")
        raise
    PARTITION_MACHINE.transition(partition, P.INACTIVE, actor=actor, parent=parent)


def partitions_record_reported(*, server: Server, reported: dict[int, bool], actor: Actor) -> int:
    """Align settled partition rows with what the fabric manager reports (the reconciler's view).
    Rows in transit are left to the task that moves them. Returns how many rows changed."""
    changed = 0
    for partition in server.partitions.filter(state__in=[P.ACTIVE, P.INACTIVE, P.FAILED]):
        active = reported.get(partition.partition_id)
        if active is None or partition.state == (P.ACTIVE if active else P.INACTIVE):
            continue
        _settle(partition, active, actor, None)
        changed += 1
    return changed
