"""The operator API's actions with a dry-run preview and a preview token, one target per call.

(The console's pages use fleet/previews.py, built in parallel, with friction, undo and multi-target
drains; folding this module into it, so that both show the same summary, is the next step.)

`preview_action(action=..., target=...)` says what the action would do (`summary`, `effects`), what
stops it (`blockers`), and gives a `token`: the action, the target and the target's state version,
signed. `action_run(action=..., target=..., token=..., actor=...)` checks the token against the
target as it is now — a change since the preview raises StalePreview (409) carrying a fresh preview —
then runs the fleet service and returns the Operation (long actions have their own; instant ones get
one recorded as done). Every action is audited (`fleet.<target>.action`, plus the service's events).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from django.core import signing
from django.db import transaction

from console.audit import Actor, audit_record
from console.errors import Conflict, DomainError
from console.models import Operation
from console.operations import operation_finish, operation_start
from fleet import services
from fleet.models import Allocation, Gpu, Server
from fleet.states import ALLOCATION_OPEN, GPU_CLEANING, GPU_HELD, GPU_MACHINE, SERVER_MACHINE, GpuState, ServerState

G, S = GpuState, ServerState
SALT = "fleet.operator_actions"
TOKEN_MAX_AGE_S = 15 * 60


class StalePreview(Conflict):
    """The target changed since the preview (or the token is bad): confirm the fresh preview."""

    def __init__(self, message: str, preview: Preview):
        super().__init__(message)
        self.preview = preview
        self.problem_extra = {"preview": preview.as_dict()}


class ActionBlocked(Conflict):
    """The action cannot run on the target as it is (see the preview's blockers)."""


class UnknownAction(DomainError):
    status_code = 404
    code = "unknown_action"


@dataclass(frozen=True)
class Preview:
    action: str
    target_type: str
    target_id: int
    target: str
    summary: str
    effects: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    token: str = ""

    @property
    def allowed(self) -> bool:
        return not self.blockers

    def as_dict(self) -> dict:
        return {**asdict(self), "allowed": self.allowed}


# action -> (target model, target state it moves to or None, service call, long: returns an Operation)
SERVER_ACTIONS = ("cordon", "uncordon", "drain")
GPU_ACTIONS = ("drain", "undrain", "scrub", "level-firmware", "clear-quarantine")


def actions_for(target_type: str) -> tuple[str, ...]:
    return {"server": SERVER_ACTIONS, "gpu": GPU_ACTIONS}.get(target_type, ())


def _version(target) -> str:
    """The target's state version: what the preview was computed from."""
    if isinstance(target, Server):
        gpus = list(Gpu.objects.filter(server=target).order_by("pk").values_list("pk", "state", "drain_requested"))
        allocations = list(Allocation.objects.filter(server=target, state__in=ALLOCATION_OPEN)
                           .order_by("pk").values_list("pk", "state"))
        parts = [target.state, gpus, allocations]
    else:
        parts = [target.state, target.drain_requested, target.last_xid_at, target.scrubbed_at, target.leveled_at,
                 Server.objects.filter(pk=target.server_id).values_list("state", flat=True).first()]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _target_type(target) -> str:
    if isinstance(target, Server):
        return "server"
    if isinstance(target, Gpu):
        return "gpu"
    raise UnknownAction(f"no operator actions on {type(target).__name__}")


def preview_action(*, action: str, target) -> Preview:
    """What `action` on `target` would do now, what blocks it, and the token that confirms it."""
    target_type = _target_type(target)
    if action not in actions_for(target_type):
        raise UnknownAction(f"no action {action!r} on a {target_type}; one of {', '.join(actions_for(target_type))}")
    target.refresh_from_db()
    summary, effects, blockers = (_server_preview if target_type == "server" else _gpu_preview)(action, target)
    token = signing.dumps({"a": action, "t": target_type, "id": target.pk, "v": _version(target)}, salt=SALT)
    return Preview(action=action, target_type=target_type, target_id=target.pk, target=str(target),
                   summary=summary, effects=effects, blockers=blockers, token=token)


def _server_preview(action: str, server: Server) -> tuple[str, list[str], list[str]]:
    held = server.gpus.filter(state__in=GPU_HELD).count()
    cleaning = server.gpus.filter(state__in=GPU_CLEANING).count()
    open_allocations = Allocation.objects.filter(server=server, state__in=ALLOCATION_OPEN).count()
    to = {"cordon": S.CORDONED, "uncordon": S.ACTIVE, "drain": S.DRAINING}[action]
    blockers = [] if SERVER_MACHINE.allowed(server.state, to) else [f"{server} is {server.state}: cannot {action}"]
    effects = {
        "cordon": [f"no new leases on {server}", f"{open_allocations} running allocation(s) continue"],
        "uncordon": [f"{server} takes new leases again", "a drain in progress is cancelled"],
        "drain": [f"no new leases on {server}", f"{open_allocations} allocation(s) run to their end",
                  f"{held} GPU(s) held, {cleaning} being cleaned: drained when none is busy"],
    }[action]
    return f"{action} {server} ({server.state} → {to})", effects, blockers


def _gpu_preview(action: str, gpu: Gpu) -> tuple[str, list[str], list[str]]:
    blockers: list[str] = []
    expect = {"scrub": (G.FREE, G.DRAINED, G.OFFLINE), "level-firmware": (G.FREE, G.DRAINED),
              "clear-quarantine": (G.QUARANTINED,), "undrain": (G.DRAINED,)}.get(action)
    if expect and gpu.state not in expect:
        blockers.append(f"{gpu} is {gpu.state}; {action} needs {' or '.join(expect)}")
    if action == "drain" and gpu.state in (G.DRAINED, G.DRAINING):
        blockers.append(f"{gpu} is already {gpu.state}")
    if action == "drain" and gpu.state not in GPU_CLEANING and gpu.state not in (G.RESERVED, G.IN_USE) \
            and not GPU_MACHINE.allowed(gpu.state, G.DRAINED) and not blockers:
        blockers.append(f"{gpu} is {gpu.state}: cannot drain")
    if action == "undrain" and not blockers and services.needs_clean(gpu):
        blockers.append(f"{gpu} faulted since its last scrub and level: scrub it first")
    effects = {
        "drain": ["held: drained after its lease is cleaned" if gpu.state in GPU_HELD else "out of the pool now"],
        "undrain": ["back in the pool (free)"],
        "scrub": ["reset and VRAM cleared, then firmware levelled; busy meanwhile"],
        "level-firmware": ["firmware checked against the pinned version and re-flashed if it differs"],
        "clear-quarantine": ["scrubbed and levelled, then free"],
    }[action]
    return f"{action} {gpu} ({gpu.state})", effects, blockers


def preview_check(*, action: str, target, token: str) -> None:
    """Raise StalePreview (with a fresh preview) unless `token` confirms this action on the target as it is."""
    try:
        claims = signing.loads(token, salt=SALT, max_age=TOKEN_MAX_AGE_S)
    except signing.BadSignature:
        claims = None
    fresh = preview_action(action=action, target=target)
    expected = {"a": action, "t": fresh.target_type, "id": target.pk, "v": _version(target)}
    if claims != expected:
        raise StalePreview(f"{target} changed since the preview (or the token is not this action's): "
                           "confirm the fresh preview", fresh)
    if fresh.blockers:
        raise ActionBlocked("; ".join(fresh.blockers))


def action_run(*, action: str, target, token: str, actor: Actor) -> Operation:
    """Confirm and run an operator action; returns its Operation."""
    preview_check(action=action, target=target, token=token)
    target_type = _target_type(target)
    audit_record(actor=actor, verb=f"fleet.{target_type}.action", target=target,
                 message=f"{action} confirmed", after={"action": action})
    call = {
        ("server", "cordon"): lambda: services.server_cordon(server=target, actor=actor),
        ("server", "uncordon"): lambda: services.server_uncordon(server=target, actor=actor),
        ("server", "drain"): lambda: services.server_drain(server=target, actor=actor),
        ("gpu", "drain"): lambda: services.gpu_drain(gpu=target, actor=actor),
        ("gpu", "undrain"): lambda: services.gpu_undrain(gpu=target, actor=actor),
        ("gpu", "scrub"): lambda: services.gpu_scrub(gpu=target, actor=actor),
        ("gpu", "level-firmware"): lambda: services.gpu_level_firmware(gpu=target, actor=actor),
        ("gpu", "clear-quarantine"): lambda: services.gpu_clear_quarantine(gpu=target, actor=actor),
    }[(target_type, action)]
    result = call()
    if isinstance(result, Operation):
        return result
    with transaction.atomic():
        op = operation_start(kind=f"{target_type}.{action}", target=target, actor=actor, line=f"{action} requested")
    operation_finish(op.pk, ok=True, line=f"{action} done")
    op.refresh_from_db()
    return op
