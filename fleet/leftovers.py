"""VMs a teardown left behind: found on the node and torn down before a GPU is touched again.

A lease's pod can be gone while its VM still holds the GPUs (a crashed runtime, a node that missed
the delete). Deactivating the partition or scrubbing under it would fail at best and, on a real
host, reset a GPU under a running guest. So before both, the agent is asked who holds each GPU's
VFIO device (`ListGpuHolders`); any holder is reported (audited with what it was) and evicted
(`EvictGpuHolders`), never worked around.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from console.audit import Actor, audit_record
from fleet.agents import agent_for
from fleet.models import Gpu

log = logging.getLogger(__name__)


def gpus_evict_leftovers(*, gpus: Iterable[Gpu], actor: Actor, parent=None) -> int:
    """Tear down whatever still holds these GPUs (one server's); returns how many GPUs had holders.
    A holder that survives the agent's eviction raises FailedPrecondition (the caller's task retries
    or gives the GPUs up to quarantine)."""
    evicted = 0
    for gpu in gpus:
        agent = agent_for(gpu.server)
        holders = agent.gpu_holders(gpu.module_id)
        if not holders:
            continue
        names = ", ".join(h.vm_id or f"{h.name}[{h.pid}]" for h in holders)
        log.warning("%s still held by %s: tearing it down", gpu, names)
        gone = agent.evict_gpu_holders(gpu.module_id)
        audit_record(actor=actor, verb="fleet.gpu.leftover_vm_evicted", target=gpu, parent=parent,
                     message=f"still held by {names} after its workload ended: torn down",
                     after={"holders": [{"pid": h.pid, "name": h.name, "vm_id": h.vm_id} for h in gone or holders]})
        evicted += 1
    return evicted
