"""What tenants does when fleet changes an allocation a lease holds (fleet.holders calls these
after commit). Level-based: each enqueues the lease's next step, which reads the allocation."""

from __future__ import annotations

from console import dispatch
from fleet.holders import AllocationChange

LEASE_HOLDER = "lease"


def allocation_changed(change: AllocationChange) -> None:
    dispatch.enqueue("lease_advance", int(change.holder_id))


def capacity_freed() -> None:
    dispatch.enqueue("leases_place_pending", None)
