"""How the holders of allocations learn of changes: a registry fleet owns and holders subscribe to.

fleet never names who holds an allocation: `Allocation.holder` is opaque (`<kind>/<id>`, e.g.
`lease/42`). An app that holds allocations registers a handler for its kind (in its AppConfig's
`ready()`); after a change to an allocation commits (its state, or one of its GPUs' cleaning
steps) fleet calls the handler with the allocation's id, holder and state. Handlers are cheap and
level-based: they enqueue a step that reads the allocation, so a lost call is caught up by the
holder's reconciler. `capacity_freed` listeners hear that GPUs became free (pending work may fit).

Boots: a holder that waits for the VM on its allocation to boot says which allocations it waits on
(`follow_boots(kind, booting=..., record=...)`); the node watcher (fleet/node_watch.py) follows
those VMs' boot streams and hands each event to `record`, which returns True once the boot is over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.db import transaction

from hardware.types import BootPhaseEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AllocationChange:
    allocation_id: int
    holder: str
    state: str
    reason: str = ""  # e.g. the fault, for `faulted`

    @property
    def kind(self) -> str:
        return self.holder.partition("/")[0]

    @property
    def holder_id(self) -> str:
        return self.holder.partition("/")[2]


Handler = Callable[[AllocationChange], None]
_handlers: dict[str, Handler] = {}
_capacity_listeners: list[Callable[[], None]] = []


@dataclass(frozen=True)
class BootFollower:
    booting: Callable[[], Iterable[int]]  # ids of the allocations whose VM boot the holder waits on now
    record: Callable[[int, BootPhaseEvent], bool]  # one event of that boot; True once it is over


_boot_followers: dict[str, BootFollower] = {}


def holder_for(kind: str, ident: object) -> str:
    return f"{kind}/{ident}"


def register(kind: str, handler: Handler) -> None:
    """Call `handler(change)` after every committed change of an allocation held by `<kind>/…`."""
    _handlers[kind] = handler


def follow_boots(kind: str, *, booting: Callable[[], Iterable[int]],
                 record: Callable[[int, BootPhaseEvent], bool]) -> None:
    """The holders of kind `kind` wait on their VMs' boots: `booting()` names the allocations now,
    `record(allocation_id, event)` takes each boot event."""
    _boot_followers[kind] = BootFollower(booting, record)


def booting_allocations() -> list[int]:
    """Every allocation whose VM boot a holder waits on now."""
    return sorted({pk for follower in _boot_followers.values() for pk in follower.booting()})


def record_boot_event(*, allocation_id: int, holder: str, event: BootPhaseEvent) -> bool:
    """Hand one boot event to the allocation's holder; True once the boot is over (or nobody waits)."""
    follower = _boot_followers.get(holder.partition("/")[0])
    return True if follower is None else follower.record(allocation_id, event)


def on_capacity_freed(listener: Callable[[], None]) -> None:
    if listener not in _capacity_listeners:
        _capacity_listeners.append(listener)


def notify_on_commit(change: AllocationChange) -> None:
    transaction.on_commit(lambda: _call(change))


def capacity_freed_on_commit() -> None:
    transaction.on_commit(_capacity_freed)


def _call(change: AllocationChange) -> None:
    handler = _handlers.get(change.kind)
    if handler is None:
        log.debug("no handler for holder kind %r (%s)", change.kind, change)
        return
    try:
        handler(change)
    except Exception:  # the change is committed; the holder's reconciler catches up
        log.exception("holder handler failed for %s", change)


def _capacity_freed() -> None:
    for listener in _capacity_listeners:
        try:
            listener()
        except Exception:
            log.exception("capacity listener failed")
