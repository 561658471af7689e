"""The fleet map's read model: every server with its GPUs' states, holders and time in state.

A constant number of queries whatever the fleet's size (version, servers, GPUs, held GPUs, time in
state, active partitions for the capacity strip), and plain tuples rather than model instances, so a
1,000-server map renders in well under the time a browser takes to paint it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Max, Q
from django.utils import timezone

from console.models import AuditEvent, Operation
from fleet.constants import STATE_LIMITS_S
from fleet.models import Allocation, AllocationGpu, Gpu, NvSwitch, Partition, Server
from fleet.placement import offerable_counts
from fleet.snapshot import SCHEDULABLE_SERVER_STATES
from fleet.states import ALLOCATION_OPEN, PARTITION_OCCUPYING, GpuState, ServerState
from hardware.platforms import PLATFORMS
from hardware.xid import xid_entry

G, S = GpuState, ServerState

# Short class names keep 8,000 cells under the HTML budget (bench/ui.py); console.css maps them.
STATE_CODE = {
    G.FREE: "f", G.RESERVED: "r", G.IN_USE: "u", G.SCRUBBING: "s", G.LEVELING: "l",
    G.DRAINING: "d", G.DRAINED: "x", G.QUARANTINED: "q", G.OFFLINE: "o",
}
# Worst first: what a server's tile shows when any of its GPUs is in it.
SEVERITY = (G.OFFLINE, G.QUARANTINED, G.DRAINING, G.DRAINED, G.SCRUBBING, G.LEVELING, G.RESERVED, G.IN_USE, G.FREE)
NOTABLE = frozenset({G.OFFLINE, G.QUARANTINED, G.DRAINING, G.DRAINED, G.SCRUBBING, G.LEVELING})
TRANSITIONAL_GPU = frozenset(STATE_LIMITS_S)
HEALTH_CHOICES = {"healthy": "Healthy", "faulted": "Quarantined or offline", "xid": "Had an Xid", "hot": "Hot"}


def holder_label(holder: str) -> str:
    """`lease/42` → `lease 42` (holders are opaque to fleet; this is only for people)."""
    return holder.replace("/", " ", 1) if holder else ""


@dataclass
class GpuCell:
    pk: int
    module_id: int
    state: str
    tenant: str = ""
    holder: str = ""
    temperature_c: float | None = None
    last_xid: int | None = None
    since: datetime | None = None
    overdue: bool = False
    hot: bool = False
    isolated: bool = True
    limit_s: int | None = None  # how long its state (or phase) may last before it is overdue
    phase: str = ""  # what its holder is doing with it, when that is timed (the console's "booting")

    @property
    def mark(self) -> str:
        return tenant_mark(self.tenant)

    @property
    def code(self) -> str:
        return STATE_CODE[self.state]

    @property
    def state_label(self) -> str:
        return G(self.state).label.lower()

    @property
    def lease(self) -> str:
        return holder_label(self.holder)


@dataclass
class ServerTile:
    pk: int
    hostname: str
    platform: str
    rack: str
    slot: int
    state: str
    since: datetime | None = None
    overdue: bool = False
    limit_s: int | None = None
    gpus: list[GpuCell] = field(default_factory=list)

    @property
    def worst(self) -> str:
        states = {g.state for g in self.gpus}
        return next((s for s in SEVERITY if s in states), G.FREE)

    @property
    def worst_notable(self) -> str:
        return self.worst if self.worst in NOTABLE else ""

    @property
    def worst_code(self) -> str:
        return STATE_CODE[self.worst] if self.worst in NOTABLE else ""

    @property
    def free(self) -> int:
        return sum(1 for g in self.gpus if g.state == G.FREE)

    @property
    def schedulable(self) -> bool:
        return self.state == S.ACTIVE

    @property
    def available(self) -> int:
        """Free GPUs a new lease could get: none on a cordoned, draining or unreachable server."""
        return self.free if self.schedulable else 0

    @property
    def owners(self) -> list[str]:
        return sorted({g.tenant for g in self.gpus if g.tenant})


@dataclass(frozen=True)
class Capacity:
    free: int  # free, healthy GPUs on schedulable servers
    placements: dict[int, int]  # size -> how many leases of that size fit now


def _active_partitions() -> dict[int, frozenset[int]]:
    active: dict[int, set[int]] = {}
    for server_id, partition_id in Partition.objects.filter(state__in=PARTITION_OCCUPYING).values_list(
        "server_id", "partition_id"
    ):
        active.setdefault(server_id, set()).add(partition_id)
    return {k: frozenset(v) for k, v in active.items()}


def _capacity(servers: list[tuple[int, str, int]], active: dict[int, frozenset[int]]) -> Capacity:
    """From (server id, platform, mask of its free healthy GPUs, 0 unless schedulable)."""
    counts: dict[int, int] = {}
    free = 0
    for pk, platform, avail in servers:
        free += avail.bit_count()
        if platform not in PLATFORMS:
            continue
        for size, n in offerable_counts(platform, avail, active.get(pk, frozenset())):
            counts[size] = counts.get(size, 0) + n
    return Capacity(free=free, placements=dict(sorted(counts.items(), reverse=True)))


def capacity_of(tiles: list[ServerTile]) -> Capacity:
    """Free GPUs on schedulable servers and how many 8/4/2/1-GPU leases placement could place now
    (partition-aware: fleet.placement.offerable_counts on each server's free mask and active
    partitions). One query (the active partitions); the rest comes from the tiles."""
    servers = []
    for t in tiles:
        avail = 0
        if t.state in SCHEDULABLE_SERVER_STATES:
            for c in t.gpus:
                if c.state == G.FREE and c.isolated:
                    avail |= 1 << c.module_id
        servers.append((t.pk, t.platform, avail))
    return _capacity(servers, _active_partitions())


@dataclass
class FleetMap:
    racks: list[tuple[str, list[ServerTile]]]
    counts: dict[str, int]
    server_counts: dict[str, int]
    owners: list[str]
    total_servers: int
    shown_servers: int
    version: int
    capacity: Capacity

    @property
    def legend(self) -> list[tuple[str, str, str, int]]:
        """(state, label, cell class, GPUs in it) for every GPU state."""
        return [(s, G(s).label, STATE_CODE[s], n) for s, n in self.counts.items()]

    @property
    def tenant_marks(self) -> list[tuple[str, str]]:
        return [(t, tenant_mark(t)) for t in self.owners]


@dataclass(frozen=True)
class Filters:
    state: str = ""  # a GPU state: servers with at least one GPU in it
    tenant: str = ""
    platform: str = ""
    health: str = ""
    q: str = ""  # hostname contains

    @property
    def active(self) -> bool:
        return any((self.state, self.tenant, self.platform, self.health, self.q))

    def matches(self, tile: ServerTile) -> bool:
        if self.q and self.q.lower() not in tile.hostname.lower():
            return False
        if self.platform and tile.platform != self.platform:
            return False
        if self.state and not any(g.state == self.state for g in tile.gpus) and tile.state != self.state:
            return False
        if self.tenant and self.tenant not in tile.owners:
            return False
        if self.health == "healthy":
            return tile.state == S.ACTIVE and not any(g.state in (G.QUARANTINED, G.OFFLINE) for g in tile.gpus)
        if self.health == "faulted":
            return tile.state == S.UNREACHABLE or any(g.state in (G.QUARANTINED, G.OFFLINE) for g in tile.gpus)
        if self.health == "xid":
            return any(g.last_xid for g in tile.gpus)
        if self.health == "hot":
            return any(g.hot for g in tile.gpus)
        return True


def fleet_summary() -> FleetMap:
    """The legend's counts, the owners and the capacity strip without the tiles: aggregate queries
    and only the free GPUs' rows (what the live map refreshes once a second)."""
    counts = dict(Gpu.objects.values_list("state").annotate(n=Count("id")).order_by())
    server_counts = dict(Server.objects.values_list("state").annotate(n=Count("id")).order_by())
    owners = sorted(set(AllocationGpu.objects.filter(held=True).exclude(allocation__owner="")
                         .values_list("allocation__owner", flat=True).distinct()))
    servers = list(Server.objects.values_list("pk", "platform", "state"))
    masks: dict[int, int] = {}
    for server_id, module_id in Gpu.objects.filter(
        state=G.FREE, isolated=True, server__state__in=SCHEDULABLE_SERVER_STATES
    ).values_list("server_id", "module_id"):
        masks[server_id] = masks.get(server_id, 0) | 1 << module_id
    capacity = _capacity([(pk, platform, masks.get(pk, 0)) for pk, platform, _ in servers], _active_partitions())
    return FleetMap(racks=[], counts={s: counts.get(s, 0) for s in G.values},
                    server_counts={s: server_counts.get(s, 0) for s in S.values}, owners=owners,
                    total_servers=len(servers), shown_servers=len(servers), version=0, capacity=capacity)


def latest_version() -> int:
    """The id of the newest audit event: the version a page rendered now is current to."""
    return AuditEvent.objects.aggregate(v=Max("id"))["v"] or 0


def server_tiles(server_ids: list[int] | None = None) -> list[ServerTile]:
    """These servers (default: all) as tiles, in rack and slot order. Four queries."""
    now = timezone.now()
    only = {} if server_ids is None else {"pk__in": server_ids}
    only_gpus = {} if server_ids is None else {"server_id__in": server_ids}
    tiles = {
        pk: ServerTile(pk, hostname, platform, rack, slot, state)
        for pk, hostname, platform, rack, slot, state in Server.objects.filter(**only)
        .order_by("rack", "slot", "hostname").values_list("pk", "hostname", "platform", "rack", "slot", "state")
    }
    held = {
        gpu_id: (owner, holder)
        for gpu_id, owner, holder in AllocationGpu.objects.filter(held=True, **{
            f"gpu__{k}": v for k, v in only_gpus.items()})
        .values_list("gpu_id", "allocation__owner", "allocation__holder")
    }
    by_pk: dict[int, GpuCell] = {}
    for pk, server_id, module_id, state, temperature, xid, isolated in Gpu.objects.filter(**only_gpus).order_by(
        "server_id", "module_id"
    ).values_list("pk", "server_id", "module_id", "state", "temperature_c", "last_xid", "isolated"):
        tile = tiles.get(server_id)
        if tile is None:
            continue
        owner, holder = held.get(pk, ("", ""))
        spec = PLATFORMS.get(tile.platform)
        cell = GpuCell(pk, module_id, state, owner, holder, temperature, xid, isolated=isolated,
                       hot=bool(spec and temperature is not None and temperature >= spec.slowdown_temp_c))
        tile.gpus.append(cell)
        by_pk[pk] = cell
    _time_in_state(tiles, by_pk, now)
    return list(tiles.values())


def _time_in_state(tiles: dict[int, ServerTile], cells: dict[int, GpuCell], now: datetime) -> None:
    """When each transitional GPU and draining server entered its state: the audit log's newest event
    of that verb for it (one query for all of them)."""
    gpus = [c for c in cells.values() if c.state in TRANSITIONAL_GPU]
    servers = [t for t in tiles.values() if t.state in TRANSITIONAL_GPU]
    if not gpus and not servers:
        return
    q = Q(pk__in=[])
    if gpus:
        q |= Q(target_type="fleet.gpu", target_id__in=[str(c.pk) for c in gpus],
               verb__in=[f"fleet.gpu.{s}" for s in {c.state for c in gpus}])
    if servers:
        q |= Q(target_type="fleet.server", target_id__in=[str(t.pk) for t in servers],
               verb__in=[f"fleet.server.{s}" for s in {t.state for t in servers}])
    since = {
        (target_type, target_id, verb): at
        for target_type, target_id, verb, at in AuditEvent.objects.filter(q)
        .values_list("target_type", "target_id", "verb").annotate(at=Max("at")).order_by()
    }
    for c in gpus:
        c.since = since.get(("fleet.gpu", str(c.pk), f"fleet.gpu.{c.state}"))
        c.limit_s = STATE_LIMITS_S[c.state]
        c.overdue = bool(c.since and (now - c.since).total_seconds() > c.limit_s)
    for t in servers:
        t.since = since.get(("fleet.server", str(t.pk), f"fleet.server.{t.state}"))
        t.limit_s = STATE_LIMITS_S[t.state]
        t.overdue = bool(t.since and (now - t.since).total_seconds() > t.limit_s)


def tenant_mark(name: str) -> str:
    """A tenant's mark on its GPUs: its initial. One byte per cell, the same in every render and
    process (a tile re-rendered alone marks its owners as the rest of the page does), and it reads
    without the legend, which names who has which initial."""
    return name[:1].upper()


def fleet_map(filters: Filters | None = None) -> FleetMap:
    """The whole map: tiles grouped by rack (filtered), legend counts over the whole fleet."""
    filters = filters or Filters()
    version = latest_version()
    tiles = server_tiles()
    owners = sorted({g.tenant for t in tiles for g in t.gpus if g.tenant})
    counts = Counter(g.state for t in tiles for g in t.gpus)
    server_counts = Counter(t.state for t in tiles)
    shown = [t for t in tiles if filters.matches(t)] if filters.active else tiles
    racks: dict[str, list[ServerTile]] = {}
    for t in shown:
        racks.setdefault(t.rack, []).append(t)
    return FleetMap(
        racks=list(racks.items()),
        counts={s: counts.get(s, 0) for s in G.values},
        server_counts={s: server_counts.get(s, 0) for s in S.values},
        owners=owners,
        total_servers=len(tiles),
        shown_servers=len(shown),
        version=version,
        capacity=capacity_of(tiles),
    )


# ----------------------------------------------------------------------------- one server's page
@dataclass
class PartitionNode:
    """One row of the platform's partition table, with what holds it or why it cannot be used."""

    partition_id: int
    module_ids: tuple[int, ...]
    nvlinks: int
    state: str
    holder: str = ""
    owner: str = ""
    allocation_state: str = ""
    unusable: list[str] = field(default_factory=list)
    children: list[PartitionNode] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.module_ids)

    @property
    def active(self) -> bool:
        return self.state in ("active", "activating", "deactivating")

    @property
    def lease(self) -> str:
        return holder_label(self.holder)


@dataclass
class GpuRow:
    gpu: Gpu
    holder: str = ""
    owner: str = ""
    pinned_firmware: str = ""
    since: datetime | None = None
    overdue: bool = False

    @property
    def firmware_ok(self) -> bool:
        return self.gpu.firmware_version == self.pinned_firmware

    @property
    def xid(self):
        return xid_entry(self.gpu.last_xid) if self.gpu.last_xid else None

    @property
    def lease(self) -> str:
        return holder_label(self.holder)


@dataclass
class ServerDetail:
    server: Server
    tile: ServerTile
    gpus: list[GpuRow]
    tree: list[PartitionNode]
    nvswitches: list
    history: list
    operations: list
    version: int


def _tree(server: Server, partitions, allocations: dict[int, tuple[str, str, str]],
          gpus: dict[int, Gpu]) -> list[PartitionNode]:
    """The partition table as its tree: each row under the smallest larger row that contains it."""
    spec = server.platform_spec
    rows = {p.partition_id: p for p in partitions}
    nodes = {}
    for p in sorted(spec.partitions, key=lambda p: (-p.size, p.id)):
        row = rows.get(p.id)
        holder, owner, astate = allocations.get(p.id, ("", "", ""))
        nodes[p.id] = PartitionNode(p.id, tuple(p.gpus), p.nvlinks, row.state if row else "inactive",
                                    holder, owner, astate)
    active = [n for n in nodes.values() if n.active]
    for n in nodes.values():
        for m in n.module_ids:
            gpu = gpus.get(m)
            if gpu is None:
                n.unusable.append(f"GPU {m} is missing")
            elif gpu.state in (G.QUARANTINED, G.OFFLINE):
                why = f": {gpu.quarantine_reason}" if gpu.quarantine_reason else ""
                n.unusable.append(f"GPU {m} is {gpu.get_state_display().lower()}{why}")
            elif not gpu.isolated:
                n.unusable.append(f"GPU {m} is not isolated: {gpu.isolation_reason or 'its agent says so'}")
        for a in active:
            if a is n or not set(a.module_ids) & set(n.module_ids):
                continue
            if a.size == 1 and not a.holder:
                continue  # an idle single (the baseline): placement switches it off
            who = f" ({a.lease}, {a.owner})" if a.holder else ""
            where = "inside" if set(n.module_ids) < set(a.module_ids) else "overlaps"
            n.unusable.append(f"{where} active partition {a.partition_id}{who}")
    # Nest: parent = the smallest larger row containing it.
    roots = []
    ordered = sorted(nodes.values(), key=lambda n: (-n.size, n.partition_id))
    for n in ordered:
        parents = [p for p in ordered if p.size > n.size and set(n.module_ids) <= set(p.module_ids)]
        if parents:
            min(parents, key=lambda p: p.size).children.append(n)
        else:
            roots.append(n)
    return roots


def server_detail(server_id: int, *, history: int = 40) -> ServerDetail:
    """Everything the server page shows, in a constant number of queries."""
    version = latest_version()
    server = Server.objects.get(pk=server_id)
    tile = server_tiles([server_id])[0]
    gpu_list = list(Gpu.objects.filter(server_id=server_id).order_by("module_id"))
    held = {
        gpu_id: (holder, owner)
        for gpu_id, holder, owner in AllocationGpu.objects.filter(held=True, gpu__server_id=server_id)
        .values_list("gpu_id", "allocation__holder", "allocation__owner")
    }
    allocations = {
        pid: (holder, owner, state)
        for pid, holder, owner, state in Allocation.objects.filter(server_id=server_id, state__in=ALLOCATION_OPEN)
        .values_list("partition__partition_id", "holder", "owner", "state")
    }
    since = {c.pk: c for c in tile.gpus}
    pinned = server.platform_spec.pinned_firmware
    rows = [GpuRow(g, *held.get(g.pk, ("", "")), pinned_firmware=pinned,
                   since=since[g.pk].since if g.pk in since else None,
                   overdue=since[g.pk].overdue if g.pk in since else False) for g in gpu_list]
    tree = _tree(server, Partition.objects.filter(server_id=server_id), allocations,
                 {g.module_id: g for g in gpu_list})
    gpu_ids = [str(g.pk) for g in gpu_list]
    events = list(AuditEvent.objects.filter(
        Q(target_type="fleet.server", target_id=str(server_id))
        | Q(target_type="fleet.gpu", target_id__in=gpu_ids)
        | Q(parent_type="fleet.server", parent_id=str(server_id))
    ).order_by("-id")[:history])
    operations = list(Operation.objects.filter(
        Q(target_type="fleet.server", target_id=str(server_id)) | Q(target_type="fleet.gpu", target_id__in=gpu_ids)
    ).order_by("-id")[:10])
    return ServerDetail(server, tile, rows, tree, list(NvSwitch.objects.filter(server_id=server_id)), events,
                        operations, version)
