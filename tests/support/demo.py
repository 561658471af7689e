"""A fleet that looks lived in, for the UI's tests, screenshots and bench/ui.py: leases of several
tenants on their partitions, a cordoned and a draining server, a quarantined and a scrubbing GPU."""

from __future__ import annotations

from django.db import transaction

from console.audit import Actor
from fleet import services
from fleet.allocations import allocation_claim
from fleet.models import Allocation, Gpu, Server
from fleet.states import ALLOCATION_MACHINE, GPU_MACHINE, PARTITION_MACHINE, AllocationState, GpuState

ACTOR = Actor.system("demo")


def hold(server: Server, partition_id: int, *, holder: str, owner: str) -> Allocation:
    """`holder` of `owner` runs on `partition_id` of `server`: allocation active, GPUs in use."""
    partition = server.partitions.get(partition_id=partition_id)
    gpu_ids = list(Gpu.objects.filter(server=server, module_id__in=partition.module_ids).values_list("pk", flat=True))
    with transaction.atomic():
        allocation = allocation_claim(server=server, partition_pk=partition.pk, gpu_ids=gpu_ids, holder=holder,
                                      actor=ACTOR, owner=owner, consumer_name=f"{holder.replace('/', '-')}-pod")
        assert allocation is not None, f"{server} p{partition_id} is not free"
        for other in server.partitions.filter(state="active", size=1):
            if set(other.module_ids) <= set(partition.module_ids):
                PARTITION_MACHINE.transition(other, "inactive", actor=ACTOR)
        PARTITION_MACHINE.transition(partition, "active", actor=ACTOR)
        ALLOCATION_MACHINE.transition(allocation, AllocationState.ACTIVATING, actor=ACTOR)
        ALLOCATION_MACHINE.transition(allocation, AllocationState.ACTIVE, actor=ACTOR)
        GPU_MACHINE.transition_many(Gpu.objects.filter(pk__in=gpu_ids), GpuState.IN_USE, actor=ACTOR)
    return allocation


def lived_in(servers: list[Server], tenants=("acme", "beta", "gamma", "delta")) -> dict:
    """Spread leases over the servers and put a few in the states operators look for."""
    lease = 40
    for i, server in enumerate(servers):
        sizes = [(8,)] if i % 5 == 0 else [(4, 2, 1)] if i % 5 == 1 else [(2, 2)] if i % 5 == 2 else [()]
        spec = server.platform_spec
        used: set[int] = set()
        for size in sizes[0]:
            row = next((p for p in spec.partitions if p.size == size and not set(p.gpus) & used), None)
            if row is None:
                continue
            used |= set(row.gpus)
            lease += 1
            hold(server, row.id, holder=f"lease/{lease}", owner=tenants[lease % len(tenants)])
    notes = {}
    if len(servers) > 3:
        services.server_cordon(server=servers[3], actor=ACTOR)
        notes["cordoned"] = servers[3]
    if len(servers) > 1:
        services.server_drain(server=servers[1], actor=ACTOR)
        notes["draining"] = servers[1]
    if len(servers) > 4:
        gpus = list(servers[4].gpus.order_by("module_id"))
        services.gpu_quarantine(gpu=gpus[0], actor=ACTOR, reason="Xid 79: fell off the bus")
        Gpu.objects.filter(pk=gpus[0].pk).update(last_xid=79)
        GPU_MACHINE.transition(gpus[1], GpuState.SCRUBBING, actor=ACTOR)
        notes["quarantined"] = gpus[0]
    Gpu.objects.filter(server__in=servers).update(temperature_c=41.0)
    return notes
