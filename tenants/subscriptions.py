"""What tenants does when fleet changes an allocation a lease holds (fleet.holders calls these
after commit; level-based: each enqueues the lease's next step, which reads the allocation), and
which VM boots it waits on (the node watcher follows them and hands over each boot event)."""

from __future__ import annotations

from collections.abc import Iterable

from console import correlation, dispatch
from console.audit import Actor
from console.models import Source
from fleet.holders import AllocationChange
from hardware.types import BootPhaseEvent
from tenants.models import Lease
from tenants.orchestration import lease_record_boot_event
from tenants.selectors import lease_detail
from tenants.states import LeaseState


def allocation_changed(change: AllocationChange) -> None:
    dispatch.enqueue("lease_advance", int(change.holder_id))


def capacity_freed() -> None:
    dispatch.enqueue("leases_place_pending", None)


BOOT_ACTOR = Actor.system("node-watch", source=Source.AGENT)


def booting_allocations() -> Iterable[int]:
    """The allocations of booting leases: their VMs' boots are followed."""
    return Lease.objects.filter(state=LeaseState.BOOTING, allocation__isnull=False).values_list(
        "allocation_id", flat=True)


def record_boot_event(allocation_id: int, event: BootPhaseEvent) -> bool:
    """One event of a booting lease's VM boot; True once the boot is over (or the lease moved on)."""
    lease_id = Lease.objects.filter(allocation_id=allocation_id).values_list("pk", flat=True).first()
    if lease_id is None:
        return True
    lease = lease_detail(lease_id)
    if lease.state != LeaseState.BOOTING:
        return True
    with correlation.bound(lease.correlation_id):  # the watcher's work is part of the lease's request
        return lease_record_boot_event(lease=lease, event=event, actor=BOOT_ACTOR)
