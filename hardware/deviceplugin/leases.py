"""Which GPUs the plugin may hand out: the lease view the agent keeps from the console.

The kubelet's Allocate names device ids only, never the pod. So "the pod's lease" is the lease
that holds exactly these GPUs on this node and is waiting for its pod: every id of one container
request must belong to the same lease, and that lease must be ready (its GPUs bound, scrubbed
and levelled). A GPU no lease holds, or whose lease is still scrubbing or levelling, is refused.

The agent fills the book from the console's `SetGpuLeases` (the complete set of leases on the node,
level-based): `InMemoryLeaseBook.set_bindings` replaces every grant at once. A lease is ready when
its phase is one of `ALLOCATABLE_PHASES` (compared case-insensitively, so the console may send the
GpuLease phase "Ready"/"Reserved"/"Running" or its own lease state "booting"/"running").
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from hardware.exceptions import InvalidArgument
from hardware.types import GpuLeaseBinding

# Phases in which a lease's GPUs may be handed to its pod: "Ready" (the console's word for "bound,
# scrubbed, levelled, pod coming"), the GpuLease phases Reserved / Running and the console's lease
# state booting. Anything else (Releasing, Scrubbing, Leveling, Levelled, Failed, ...) is refused.
ALLOCATABLE_PHASES = frozenset({"ready", "reserved", "booting", "running"})


def is_allocatable(phase: str) -> bool:
    return phase.casefold() in ALLOCATABLE_PHASES


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
        self._bindings: dict[str, GpuLeaseBinding] = {}

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
            self._bindings.pop(lease_id, None)

    def set_bindings(self, bindings: Iterable[GpuLeaseBinding]) -> None:
        """Replace the whole book with `bindings` (the console's complete view; idempotent).

        Raises InvalidArgument (and changes nothing) for an empty or repeated lease id or a GPU
        named by two leases.
        """
        bindings = list(bindings)
        by_id: dict[str, GpuLeaseBinding] = {}
        holder: dict[int, str] = {}
        for binding in bindings:
            if not binding.lease_id:
                raise InvalidArgument("a GPU lease needs a lease_id")
            if binding.lease_id in by_id:
                raise InvalidArgument(f"lease {binding.lease_id} is named twice")
            for module_id in binding.module_ids:
                other = holder.setdefault(module_id, binding.lease_id)
                if other != binding.lease_id:
                    raise InvalidArgument(f"GPU {module_id} is in both lease {other} and lease {binding.lease_id}")
            by_id[binding.lease_id] = binding
        grants = {b.lease_id: grant_for(b) for b in bindings}
        with self._lock:
            self._grants = grants
            self._bindings = by_id

    def bindings(self) -> tuple[GpuLeaseBinding, ...]:
        """The leases last set with `set_bindings` (still held), by lease id."""
        with self._lock:
            return tuple(self._bindings[k] for k in sorted(self._bindings) if k in self._grants)


def grant_for(binding: GpuLeaseBinding) -> LeaseGrant:
    """The device plugin's view of a lease: its GPUs' device ids (module ids) and whether they are allocatable."""
    device_ids = frozenset(str(m) for m in binding.module_ids)
    return LeaseGrant(binding.lease_id, device_ids, is_allocatable(binding.phase), binding.phase)


def grant_of(book: LeaseBook, device_id: str) -> LeaseGrant | None:
    """The lease holding `device_id`, if any."""
    return next((g for g in book.grants() if device_id in g.device_ids), None)
