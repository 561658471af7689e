"""Which GPUs the plugin may hand out: the lease view the agent keeps from the console.

The kubelet's Allocate names device ids only, never the pod. So "the pod's lease" is the lease
that holds exactly these GPUs on this node and is waiting for its pod: every id of one container
request must belong to the same lease, and that lease must be ready (its GPUs bound, scrubbed
and levelled). A GPU no lease holds, or whose lease is still scrubbing or levelling, is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class LeaseGrant:
    """A lease's GPUs on this node (device ids = GPU indexes) and whether they may be allocated."""

    lease_id: str
    device_ids: frozenset[str]
    ready: bool
    state: str = ""  # the lease's state, for refusals ("scrubbing", "leveling", ...)


class LeaseBook(Protocol):
    """The current lease view."""

    def grants(self) -> Sequence[LeaseGrant]:
        """Every lease holding GPUs on this node."""


class InMemoryLeaseBook:
    """A thread-safe LeaseBook the agent updates as the console tells it about leases."""

    def __init__(self, grants: Iterable[LeaseGrant] = ()):
        self._lock = threading.Lock()
        self._grants = {g.lease_id: g for g in grants}

    def grants(self) -> Sequence[LeaseGrant]:
        with self._lock:
            return tuple(self._grants.values())

    def put(self, lease_id: str, device_ids: Iterable[str | int], *, ready: bool, state: str = "") -> None:
        grant = LeaseGrant(lease_id, frozenset(str(d) for d in device_ids), ready, state)
        with self._lock:
            self._grants[lease_id] = grant

    def remove(self, lease_id: str) -> None:
        with self._lock:
            self._grants.pop(lease_id, None)


def grant_of(book: LeaseBook, device_id: str) -> LeaseGrant | None:
    """The lease holding `device_id`, if any."""
    return next((g for g in book.grants() if device_id in g.device_ids), None)
