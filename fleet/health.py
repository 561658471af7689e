"""GPU health from the node agents: record the counters, then act as the Xid catalog says.

`gpu_record_health` is a service like those in fleet/services.py (keyword-only, explicit actor,
owns its transaction) and changes state only through them or the GPU machine. What it does per
event (HARDWARE.md "Health: Xid codes and what an operator does"):

- every event: the GPU's counters (temperature, ECC, row remaps, last Xid) in one UPDATE; plain
  telemetry writes no audit row;
- an Xid: an audit event `fleet.gpu.xid` with the catalog's meaning and action, then
  - application faults, watch, restart-the-app, reset-when-convenient: nothing for the GPU (the
    reset every lease's clean-up does applies a pending remap);
  - reset-class (`reset_gpu`, `drain_and_reset`: 48, 62, 64, 74, 95, 109, 119, 120, 140): drain
    the GPU (idle: drained at once; held: after its lease is cleaned, which resets it);
  - fell off the bus (79, and a GPU_LOST event): the GPU goes offline and the server is drained
    (it needs a reboot);
  - a repeated Xid 64 (row remap failed again) → quarantine, RMA candidate;
  - an Xid not in the catalog: recorded and audited, nothing else;
- more than ROW_REMAP_LIMIT remaps: quarantine, RMA candidate;
- temperature ≥ the platform's shutdown temperature: quarantine; ≥ slowdown: recorded only.

Repeated events are harmless: a GPU already drained, draining, quarantined or offline is left
where it is, and a server already draining or drained is not drained again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from console.audit import Actor, audit_record
from console.models import AuditEvent
from console.statemachine import InvalidTransition
from fleet.allocations import allocation_fault, open_allocation_of
from fleet.models import Gpu, Server
from fleet.services import gpu_drain, gpu_quarantine, server_drain
from fleet.states import GPU_MACHINE, SERVER_MACHINE, GpuState, ServerState
from hardware.types import HealthEvent, HealthKind
from hardware.xid import XID_CATALOG, XidAction, XidEntry

log = logging.getLogger(__name__)
G, S = GpuState, ServerState

ROW_REMAP_LIMIT = 512  # uncorrectable remaps per GPU before it is an RMA candidate (H100)
RMA_CANDIDATE = "RMA candidate"
XID_ROW_REMAP_FAILED = 64

_DRAIN_ACTIONS = frozenset({XidAction.RESET_GPU, XidAction.DRAIN_AND_RESET})
_LOST_ACTIONS = frozenset({XidAction.DRAIN_AND_REBOOT})
# A drain is moot (or not allowed) from these; SCRUBBING/LEVELING are moot once drain_requested.
_NO_DRAIN = frozenset({G.DRAINING, G.DRAINED, G.QUARANTINED, G.OFFLINE})


def gpu_record_health(*, server: Server, event: HealthEvent, actor: Actor) -> Gpu | None:
    """Record one health event of `server`'s GPU `event.module_id` and apply the catalog's action.

    Returns the GPU as it now stands, or None when the server has no such module (logged, ignored).
    """
    if event.hostname and event.hostname != server.hostname:
        log.warning("health event for %s arrived on %s's stream; ignored", event.hostname, server.hostname)
        return None
    gpu = Gpu.objects.select_related("server").filter(server=server, module_id=event.module_id).first()
    if gpu is None:
        log.warning("%s: health event for unknown GPU module %s ignored (%s)", server.hostname,
                    event.module_id, event.kind)
        return None
    entry = XID_CATALOG.get(event.xid) if event.xid else None
    with transaction.atomic():
        repeated_64 = event.kind == HealthKind.XID and event.xid == XID_ROW_REMAP_FAILED and _had_xid(gpu, 64)
        counters = _counters(event)
        if counters:
            Gpu.objects.filter(pk=gpu.pk).update(**counters)
            for name, value in counters.items():
                setattr(gpu, name, value)
        if event.kind == HealthKind.XID and event.xid:
            _audit_xid(gpu, event, entry, actor)
        verdict = _act(gpu, event, entry, actor, repeated_64=repeated_64)
        _tell_holder(gpu, verdict, actor)
    if verdict.acted:
        gpu.refresh_from_db()
    return gpu


# ----------------------------------------------------------------------------- recording
def _counters(event: HealthEvent) -> dict:
    """The columns this event reports (absolute values from the agent), for one UPDATE."""
    values = {}
    if event.temperature_c is not None:
        values["temperature_c"] = event.temperature_c
    if event.ecc_corrected is not None:
        values["ecc_corrected"] = max(event.ecc_corrected, 0)
    if event.ecc_uncorrected is not None:
        values["ecc_uncorrected"] = max(event.ecc_uncorrected, 0)
    if event.row_remaps is not None:
        values["row_remaps"] = max(event.row_remaps, 0)
    if event.kind == HealthKind.XID and event.xid:
        values["last_xid"] = event.xid
        # The console's clock, not the agent's (a simulated agent's runs accelerated): it is compared
        # with scrubbed_at, which the console stamps (a GPU is free only after a scrub since its fault).
        values["last_xid_at"] = timezone.now()
    return values


def _audit_xid(gpu: Gpu, event: HealthEvent, entry: XidEntry | None, actor: Actor) -> None:
    if entry is None:
        meaning, action, note = "unknown Xid", "none (not in the catalog)", ""
    else:
        meaning, action, note = entry.meaning, entry.action.value, entry.note
    message = f"Xid {event.xid}: {meaning}; action: {action}" + (f" ({note})" if note else "")
    audit_record(
        actor=actor,
        verb="fleet.gpu.xid",
        target=gpu,
        after={"xid": event.xid, "action": action, "at": (event.at or timezone.now()).isoformat(),
               "agent_message": event.message},
        message=message,
    )


def _had_xid(gpu: Gpu, xid: int) -> bool:
    """Whether this GPU reported `xid` before (its audit history)."""
    return AuditEvent.objects.filter(
        verb="fleet.gpu.xid", target_type="fleet.gpu", target_id=str(gpu.pk), after__xid=xid
    ).exists()


# ----------------------------------------------------------------------------- acting
@dataclass(frozen=True)
class _Verdict:
    """What an event did: whether a service changed the GPU, and the fault its holder is told of
    (`fatal`: the workload cannot go on on this GPU, as the Xid catalog says)."""

    acted: bool = False
    fault: str = ""
    fatal: bool = False


def _act(gpu: Gpu, event: HealthEvent, entry: XidEntry | None, actor: Actor, *, repeated_64: bool) -> _Verdict:
    """Apply what the event calls for."""
    platform = gpu.server.platform_spec
    lost = event.kind == HealthKind.GPU_LOST or (
        event.kind == HealthKind.XID and entry is not None and (entry.gpu_lost or entry.action in _LOST_ACTIONS)
    )
    if lost:
        reason = f"Xid {event.xid}: fell off the bus" if event.xid else (event.message or "GPU lost")
        _gpu_offline(gpu, actor, reason)
        _server_drain(gpu.server, actor)
        return _Verdict(True, reason, fatal=True)
    if gpu.row_remaps > ROW_REMAP_LIMIT:
        return _quarantine(gpu, actor, f"{RMA_CANDIDATE}: {gpu.row_remaps} row remaps (limit {ROW_REMAP_LIMIT})")
    if repeated_64:
        return _quarantine(gpu, actor, f"{RMA_CANDIDATE}: Xid 64 (row remap failed) repeated")
    if event.kind == HealthKind.TEMPERATURE and event.temperature_c is not None:
        if event.temperature_c >= platform.shutdown_temp_c:
            return _quarantine(gpu, actor, f"thermal shutdown: {event.temperature_c:.0f} °C "
                                           f"(shutdown {platform.shutdown_temp_c} °C)")
        if event.temperature_c >= platform.slowdown_temp_c:
            log.warning("%s: thermal slowdown at %.0f °C", gpu, event.temperature_c)
        return _Verdict()
    if event.kind == HealthKind.XID and entry is not None:
        what = f"Xid {event.xid} ({entry.meaning}): {entry.action.value}"
        if entry.action in _DRAIN_ACTIONS:
            return _Verdict(_drain(gpu, actor), what, fatal=True)
        if entry.action == XidAction.RESTART_APP:
            return _Verdict(False, what, fatal=False)
    return _Verdict()


def _tell_holder(gpu: Gpu, verdict: _Verdict, actor: Actor) -> None:
    """A fault on a GPU an allocation holds is recorded on the allocation and told to its holder."""
    if not verdict.fault:
        return
    allocation = open_allocation_of(gpu)
    if allocation is not None:
        allocation_fault(allocation=allocation, actor=actor, reason=f"{gpu}: {verdict.fault}", fatal=verdict.fatal)


@contextmanager
def _unless_moot(subject, what: str) -> Iterator[None]:
    """Run a state change that another change may have made pointless meanwhile (refused as illegal):
    that is logged, not raised, since the health event itself was recorded."""
    try:
        yield
    except InvalidTransition:
        log.info("%s: %s is moot", subject, what)


def _drain(gpu: Gpu, actor: Actor) -> bool:
    if gpu.state in _NO_DRAIN or (gpu.state in (G.SCRUBBING, G.LEVELING) and gpu.drain_requested):
        return False
    with _unless_moot(gpu, "drain after Xid"):  # e.g. quarantined meanwhile: nothing left to drain
        gpu_drain(gpu=gpu, actor=actor, reset=True)
    return True


def _quarantine(gpu: Gpu, actor: Actor, reason: str) -> _Verdict:
    if gpu.state == G.QUARANTINED:
        return _Verdict()
    with _unless_moot(gpu, f"quarantine ({reason})"):
        gpu_quarantine(gpu=gpu, actor=actor, reason=reason)
    return _Verdict(True, reason, fatal=True)


def _gpu_offline(gpu: Gpu, actor: Actor, reason: str) -> None:
    """The GPU is gone from the host's bus until a reboot: offline, reason kept with it."""
    with _unless_moot(gpu, "offline"):
        GPU_MACHINE.transition(gpu, G.OFFLINE, actor=actor, fields={"quarantine_reason": reason}, message=reason)


def _server_drain(server: Server, actor: Actor) -> None:
    server.refresh_from_db(fields=["state"])
    if not SERVER_MACHINE.allowed(server.state, S.DRAINING):
        return  # already draining or drained, or in maintenance / unreachable
    with _unless_moot(server, "drain after a lost GPU"):
        server_drain(server=server, actor=actor)
