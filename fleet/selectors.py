"""Reads of the fleet, shaped for the pages and APIs that show them."""

from dataclasses import dataclass

from django.db.models import BigIntegerField, Count, F, Prefetch, Q, QuerySet, Sum, Value
from django.db.models.functions import Cast

from fleet.models import Allocation, AllocationGpu, Gpu, NvSwitch, Partition, Server
from fleet.snapshot import GpuSnapshot, ServerSnapshot
from fleet.states import PARTITION_OCCUPYING, GpuState


def server_overview() -> QuerySet[Server]:
    """Every server with its GPUs (in module order) and free-GPU counts, in two queries."""
    return (
        Server.objects.all()
        .prefetch_related(Prefetch("gpus", queryset=Gpu.objects.order_by("module_id")))
        .annotate(
            gpu_total=Count("gpus"),
            gpu_free=Count("gpus", filter=Q(gpus__state=GpuState.FREE)),
        )
        .order_by("rack", "slot")
    )


@dataclass(frozen=True)
class PlacementFleet:
    """Every server as placement sees it, with the row ids a reservation needs."""

    servers: list[ServerSnapshot]
    gpu_ids: dict[tuple[int, int], int]  # (server id, module id) -> Gpu pk


def placement_fleet(server_ids: list[int] | None = None) -> PlacementFleet:
    """The whole fleet (or these servers) for the live placement index, in three queries."""
    only = {} if server_ids is None else {"pk__in": server_ids}
    only_children = {} if server_ids is None else {"server_id__in": server_ids}
    servers = {
        pk: (hostname, platform, rack, state)
        for pk, hostname, platform, rack, state in Server.objects.filter(**only).values_list(
            "pk", "hostname", "platform", "rack", "state"
        )
    }
    gpus: dict[int, dict[int, GpuSnapshot]] = {pk: {} for pk in servers}
    gpu_ids: dict[tuple[int, int], int] = {}
    rows = Gpu.objects.filter(**only_children).values_list(
        "pk", "server_id", "module_id", "state", "firmware_version", "temperature_c",
        "isolated",  # a GPU that is not isolated (IOMMU group, host driver) is never placed
    )
    # Who holds each held GPU (placement spreads one owner's allocations over racks): held GPUs only.
    owners = dict(AllocationGpu.objects.filter(
        held=True, **({} if server_ids is None else {"gpu__server_id__in": server_ids})
    ).values_list("gpu_id", "allocation__owner"))
    for pk, server_id, module_id, state, firmware, temperature, isolated in rows:
        gpu_ids[server_id, module_id] = pk
        gpus[server_id][module_id] = GpuSnapshot(
            module_id=module_id,
            state=state,
            healthy=isolated and state not in (GpuState.QUARANTINED, GpuState.OFFLINE),
            firmware_version=firmware,
            temperature_c=temperature,
            tenant=owners.get(pk) or None,
        )
    active: dict[int, set[int]] = {pk: set() for pk in servers}
    # Only the occupying ones: a fleet has some 26 partition rows per server, most of them inactive.
    for server_id, partition_id in Partition.objects.filter(
        state__in=PARTITION_OCCUPYING, **only_children
    ).values_list("server_id", "partition_id"):
        active[server_id].add(partition_id)
    snapshots = [
        ServerSnapshot(
            server_id=pk,
            hostname=hostname,
            platform_key=platform,
            rack=rack,
            state=state,
            gpus=gpus[pk],
            active_partition_ids=frozenset(active[pk]),
        )
        for pk, (hostname, platform, rack, state) in servers.items()
    ]
    return PlacementFleet(snapshots, gpu_ids)


# What decides which of a server's partitions fit: its state, the mask of its free usable GPUs (bit
# `module_id`) and the mask of its occupying partitions (bit `partition_id`; ids stay under 63 on every
# platform's table, and a wider id would only blur the mask: the index then notices later, never wrongly).
Fingerprint = tuple[str, int, int]


def placement_fingerprints() -> dict[int, Fingerprint]:
    """Every server's fingerprint, in three aggregate reads: far less than `placement_fleet` (every GPU
    row), so the live index can look for changes often and read again only the servers that changed."""
    one = Cast(Value(1), BigIntegerField())

    def masks(queryset, bit: str) -> dict[int, int]:
        rows = queryset.order_by().values_list("server_id").annotate(
            mask=Cast(Sum(one.bitleftshift(F(bit))), BigIntegerField()))
        return dict(rows)

    gpus = masks(Gpu.objects.filter(state=GpuState.FREE, isolated=True), "module_id")
    partitions = masks(Partition.objects.filter(state__in=PARTITION_OCCUPYING), "partition_id")
    return {pk: (state, gpus.get(pk, 0), partitions.get(pk, 0))
            for pk, state in Server.objects.order_by().values_list("pk", "state")}


def snapshot_fingerprint(server: ServerSnapshot) -> Fingerprint:
    """The fingerprint of a server as `placement_fleet` read it (the same as `placement_fingerprints`
    computes in the database: a free GPU is usable when it is isolated, i.e. healthy)."""
    free = sum(1 << m for m, gpu in server.gpus.items() if gpu.state == GpuState.FREE and gpu.healthy)
    return server.state, free, sum(1 << p for p in server.active_partition_ids)


def partition_pks(server_id: int) -> dict[int, int]:
    """A server's partition rows by fabric-manager partition id (they never change once created)."""
    return dict(Partition.objects.filter(server_id=server_id).values_list("partition_id", "pk"))


def server_ids_of(target_type: str, ids: list[str]) -> dict[str, int]:
    """Which server each of these fleet objects (`fleet.gpu`, `fleet.partition`, `fleet.allocation`,
    `fleet.nvswitch`) is on, by id as text: one query (the live relay's group resolver)."""
    model = {"fleet.gpu": Gpu, "fleet.partition": Partition, "fleet.allocation": Allocation,
             "fleet.nvswitch": NvSwitch}.get(target_type)
    if model is None or not ids:
        return {}
    pks = [int(i) for i in ids if str(i).isdigit()]
    return {str(pk): server_id for pk, server_id in model.objects.filter(pk__in=pks).values_list("pk", "server_id")}


def page_groups_of_events(events: list[dict]) -> dict[int, set[str]]:
    """The live relay's resolver for fleet objects: every fleet event goes to the map (`fleet`) and to
    its server's page (`server-<id>`); one query per kind of object in the batch."""
    by_type: dict[str, list[str]] = {}
    for e in events:
        for kind, pk in ((e["target_type"], e["target_id"]), (e.get("parent_type"), e.get("parent_id"))):
            if kind and kind.startswith("fleet.") and kind != "fleet.server":
                by_type.setdefault(kind, []).append(pk)
    servers = {kind: server_ids_of(kind, ids) for kind, ids in by_type.items()}
    out: dict[int, set[str]] = {}
    for e in events:
        groups = set()
        for kind, pk in ((e["target_type"], e["target_id"]), (e.get("parent_type"), e.get("parent_id"))):
            if not kind or not kind.startswith("fleet."):
                continue
            groups.add("fleet")
            server_id = pk if kind == "fleet.server" else servers.get(kind, {}).get(str(pk))
            if server_id:
                groups.add(f"server-{server_id}")
        if groups:
            out[e["id"]] = groups
    return out
