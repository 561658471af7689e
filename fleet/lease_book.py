"""The node's device-plugin lease book: which pod may be handed which GPUs, from fleet's allocations.

Level-based and idempotent: every push is the complete set of open allocations on the server, so
a lost push is repaired by the next (the fleet reconciler pushes every pass).
"""

from __future__ import annotations

import logging

from fleet.agents import agent_for
from fleet.models import Allocation, AllocationGpu, Server
from fleet.states import ALLOCATION_OPEN, AllocationState
from hardware.exceptions import HardwareError
from hardware.types import GpuLeaseBinding

log = logging.getLogger(__name__)
A = AllocationState

# The phase the device plugin sees per allocation state: only usable ones are allocatable
# (hardware.deviceplugin.leases.ALLOCATABLE_PHASES).
BOOK_PHASE = {
    A.RESERVED: "Reserved", A.ACTIVATING: "Reserved", A.ACTIVE: "Running",
    A.RELEASING: "Releasing", A.CLEANING: "Scrubbing", A.FAULTED: "Faulted",
}


def lease_book(server: Server) -> list[GpuLeaseBinding]:
    """The server's open allocations as device-plugin bindings, in two queries."""
    allocations = list(Allocation.objects.filter(server=server, state__in=sorted(ALLOCATION_OPEN)).order_by("pk"))
    modules: dict[int, list[int]] = {}
    for allocation_id, module_id in AllocationGpu.objects.filter(
        allocation__in=[a.pk for a in allocations], held=True
    ).values_list("allocation_id", "gpu__module_id"):
        modules.setdefault(allocation_id, []).append(module_id)
    return [
        GpuLeaseBinding(
            lease_id=a.claim_name or a.holder, pod_namespace=a.consumer_namespace, pod_name=a.consumer_name,
            module_ids=tuple(sorted(modules.get(a.pk, ()))),
            # A fault the holder may live with keeps its GPUs allocatable (its pod may restart).
            phase="Running" if a.state == A.FAULTED and not a.fault_fatal else BOOK_PHASE[a.state],
        )
        for a in allocations
    ]


def lease_book_push(*, server: Server, quiet: bool = False) -> bool:
    """Send the server's agent its complete lease book. `quiet`: an unreachable agent is logged,
    not raised (the reconciler pushes again). True when it was sent. A server without an agent
    (registered from platform data alone) has no device plugin to tell."""
    if not server.agent_endpoint:
        return False
    try:
        agent_for(server).set_gpu_leases(lease_book(server))
    except HardwareError as exc:
        if not quiet:
            raise
        log.warning("%s: lease book not pushed: %s", server, exc)
        return False
    return True
