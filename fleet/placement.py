"""Choose a server and an NVLink partition for a lease: a pure function over a fleet snapshot.

A lease's GPUs are exactly one row of the platform's fabric-manager partition table (invariant 3),
so placement picks a (server, partition) pair, never loose GPUs. No Django here: the services layer
builds `fleet.snapshot` objects from the database and reserves what this module chose.

What may be offered
-------------------
* the request size is a partition size of the server's platform (read from its table, never "8");
* the server is `active` (cordoned, draining, maintenance and unreachable servers get nothing);
* every GPU of the partition is `free` and healthy: the fabric manager lists partitions holding
  excluded, quarantined, offline or draining GPUs all the same, so we hide them here;
* activating it is legal: an active partition overlapping the target may only be an idle 1-GPU
  partition inside it, which is returned in `Placement.deactivate_first`; any other overlapping
  active partition would make the fabric manager answer "in use".

Best fit (the default policy): least damage to larger blocks, like a buddy allocator
------------------------------------------------------------------------------------
Partition tables nest like a buddy allocator's blocks (on HGX H100: server > halves > NVLink pairs >
single GPUs), and a request can only use a free block of exactly its size. Candidates are ranked by
this key, smallest first:

1. *damage*: what taking the candidate costs the larger blocks that contain it. Each enclosing
   block counts 1 if it is wholly free now, 1/2 if one occupant lives in it, 1/4 for two, and so on
   (occupants: running leases, and unavailable GPUs outside them). A block with many leases in it
   will be whole again only when the last of them ends, so one more lease there costs little; a
   block with none or one is the next to become whole and costs the most. Consequences: a fully
   free server is broken only when no other server can take the request (there every enclosing
   block is free, the highest score; elsewhere one is occupied), so whole servers stay free for
   8-GPU requests; a lone pair or single whose sibling is busy is usually taken before a fresh block
   is split, and small leases gather in blocks that already hold leases, while a lone pair on an
   almost empty server may lose to splitting a pair on a crowded one, whose blocks will not be free
   soon anyway.
2. the server's occupants (more first): the same reasoning at server level, for candidates whose
   blocks score the same.
3. the server's free GPU count: fill the server already most used.
4. GPUs not at the platform's pinned firmware (fewer first): they would need a re-flash anyway.
5. the hottest GPU of the partition (cooler first; unknown temperature counts as hottest).
6. rack spread: the requesting tenant's GPUs already in the server's rack (fewer first), so one
   tenant's leases do not share a rack's power and network failure domain needlessly.
7. stable id order: server id, then partition id.

Placement never knows how long a lease will run, and never moves one, so it cannot tell which block
will be free first; it assumes every running lease is as likely as any other to end soon. Then a
block is whole again only once each of its n occupants has ended, which gets less likely with every
occupant: halving per occupant is that idea, not a fitted model. On bench/placement.py's churn
replay (on 16 servers, when this was measured) this ranking refuses fewer requests to
fragmentation than the rule it replaced ("smallest enclosing free block, then the most used
server"), averaged over workload seeds; it is not better on every seed.

First fit (`policy="firstfit"`) takes the first offerable partition in (server id, partition id)
order; it exists only as the benchmark's baseline.

Fleet scale
-----------
`FreeBlockIndex` keeps, for each request size, the offerable (server, partition) candidates in heaps
bucketed by (damage, server occupants, server free count), the static part of the key. A decision
looks at the few non-empty buckets in order and the top of one heap; updates recompute one server
(its table has a handful of rows) and push fresh heap entries, stale ones being dropped lazily by a
version check. Which partitions of a server are offerable, their damage and the server's occupants
depend only on (platform, free-GPU mask, active partitions), so that part is cached across servers.
The rack-spread tie-break depends on the requesting tenant, so it is applied only among the entries
tied on everything before it, popped from the top of the winning bucket until one lies in a rack
where the tenant holds as few GPUs as it does in any rack (on identical servers the tie is the whole
bucket). `place_bruteforce` is the reference the index is tested against
(tests/fleet/test_placement.py and test_placement_rack_ties.py, with hypothesis over random fleets
and update sequences).

Platforms are looked up with `hardware.platforms.get_platform(server.platform_key)`.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache

from fleet.snapshot import (
    GPU_FREE,
    NoFit,
    Placement,
    Request,
    ServerSnapshot,
    with_placement,
    with_release,
)
from hardware.platforms import all_partition_sizes, get_platform

BESTFIT = "bestfit"
FIRSTFIT = "firstfit"
POLICIES = (BESTFIT, FIRSTFIT)

__all__ = [
    "BESTFIT",
    "FIRSTFIT",
    "FreeBlockIndex",
    "NoFit",
    "Placement",
    "Request",
    "ServerSnapshot",
    "place",
    "place_bruteforce",
    "place_on_snapshot",
]


# --- per-platform table, precomputed once as bit masks ---------------------------------------------


@dataclass(frozen=True)
class _Table:
    """A platform's partition table as bit masks (bit m = GPU module m), rows in id order."""

    ids: tuple[int, ...]
    masks: tuple[int, ...]
    sizes: tuple[int, ...]
    gpus: tuple[tuple[int, ...], ...]
    enclosing: tuple[tuple[int, ...], ...]  # row indices of the partitions containing row i (i too)
    row_of: Mapping[int, int]
    size_set: frozenset[int]
    pinned_firmware: str
    all_gpus: int  # mask of every GPU in the table


@cache
def _table(platform_key: str) -> _Table:
    platform = get_platform(platform_key)
    rows = sorted(platform.partitions, key=lambda p: p.id)
    masks = tuple(sum(1 << g for g in p.gpus) for p in rows)
    enclosing = tuple(tuple(j for j, outer in enumerate(masks) if inner & ~outer == 0) for inner in masks)
    return _Table(
        ids=tuple(p.id for p in rows),
        masks=masks,
        sizes=tuple(p.size for p in rows),
        gpus=tuple(tuple(sorted(p.gpus)) for p in rows),
        enclosing=enclosing,
        row_of={p.id: i for i, p in enumerate(rows)},
        size_set=frozenset(p.size for p in rows),
        pinned_firmware=platform.pinned_firmware,
        all_gpus=sum(1 << g for g in {g for p in rows for g in p.gpus}),
    )


# --- one server's offerable partitions -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Candidate:
    size: int
    partition_id: int
    gpus: tuple[int, ...]
    deactivate_first: tuple[int, ...]
    damage: float  # what taking it costs the larger blocks around it (module docstring)
    fw_mismatch: int  # GPUs not at the pinned firmware
    temp: float  # hottest GPU; unknown = +inf


@dataclass(frozen=True)
class _ServerView:
    """What placement derives from one ServerSnapshot; recomputed whenever the server changes."""

    snapshot: ServerSnapshot
    sizes: frozenset[int]
    free: int  # free and healthy GPUs
    occupants: int  # running leases and unavailable GPUs outside them
    candidates: tuple[_Candidate, ...]  # in partition id order; empty unless schedulable
    tenant_gpus: Mapping[str, int]  # GPUs each tenant holds here (for rack spread)


# Damage weights (see the module docstring): a larger block holding n occupants counts
# _BLOCK_WEIGHT * _OCCUPIED_DISCOUNT ** n. Powers of two keep the sums exact floats.
_BLOCK_WEIGHT = 1.0
_OCCUPIED_DISCOUNT = 0.5


@lru_cache(maxsize=1 << 16)
def _layout(
    platform_key: str, avail: int, active: frozenset[int]
) -> tuple[int, tuple[tuple[int, tuple[int, ...], float], ...]]:
    """(occupants, ((row, deactivate_first, damage) of each offerable partition, in id order)).

    An *occupant* is a running lease (an active partition with a GPU that is not available) or a
    GPU that is not available outside such a partition (quarantined, scrubbing, unhealthy, ...).
    A pure function of the platform, the mask of available GPUs and the active partitions, so it is
    cached: a fleet shows few distinct layouts, and this keeps an index update cheap.
    """
    table = _table(platform_key)
    active_rows = []
    for pid in active:
        if pid not in table.row_of:
            raise ValueError(f"active partition {pid} is not in {platform_key}'s partition table")
        active_rows.append(table.row_of[pid])
    occupants = [table.masks[a] for a in active_rows if table.masks[a] & ~avail]
    covered = 0
    for o in occupants:
        covered |= o
    loose = table.all_gpus & ~avail & ~covered
    occupants.extend(1 << g for g in range(loose.bit_length()) if loose >> g & 1)
    rows = []
    for i, mask in enumerate(table.masks):
        if mask & ~avail:
            continue  # a GPU of it is busy, unhealthy or missing
        idle_singles = []
        legal = True
        for a in active_rows:
            if table.masks[a] & mask:
                # Overlapping, and its GPUs are free (they lie inside this free partition): only an
                # idle 1-GPU partition may be switched off for us; anything bigger is someone's layout.
                if table.sizes[a] == 1:
                    idle_singles.append(table.ids[a])
                else:
                    legal = False
                    break
        if not legal:
            continue
        damage = 0.0
        for j in table.enclosing[i]:
            if j != i:
                outer = table.masks[j]
                n = sum(1 for o in occupants if o & ~outer == 0)
                damage += _BLOCK_WEIGHT * _OCCUPIED_DISCOUNT**n
        rows.append((i, tuple(sorted(idle_singles)), damage))
    return len(occupants), tuple(rows)


def _view(server: ServerSnapshot) -> _ServerView:
    table = _table(server.platform_key)
    avail = 0
    tenant_gpus: dict[str, int] = {}
    for module_id, gpu in server.gpus.items():
        if gpu.state == GPU_FREE and gpu.healthy:
            avail |= 1 << module_id
        if gpu.tenant is not None:
            tenant_gpus[gpu.tenant] = tenant_gpus.get(gpu.tenant, 0) + 1
    free = avail.bit_count()
    occupants, rows = _layout(server.platform_key, avail, server.active_partition_ids)
    if not server.schedulable:
        return _ServerView(server, table.size_set, free, occupants, (), tenant_gpus)

    candidates = []
    pinned = table.pinned_firmware
    for i, deactivate, damage in rows:
        gpus = table.gpus[i]
        fw_mismatch = 0
        temp = -math.inf
        for g in gpus:
            snap = server.gpus[g]
            if snap.firmware_version != pinned:
                fw_mismatch += 1
            t = math.inf if snap.temperature_c is None else float(snap.temperature_c)
            if t != t:  # NaN would break heap order: treat an unreadable sensor as hottest
                t = math.inf
            if t > temp:
                temp = t
        candidates.append(_Candidate(table.sizes[i], table.ids[i], gpus, deactivate, damage, fw_mismatch, temp))
    return _ServerView(server, table.size_set, free, occupants, tuple(candidates), tenant_gpus)


def _placement(server_id: int, c: _Candidate) -> Placement:
    return Placement(server_id, c.partition_id, c.gpus, c.deactivate_first)


# --- the reason when nothing fits ------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _no_fit_reason(
    k: int,
    fleet_sizes: Iterable[int],
    servers_offering_k: int,
    unaligned: int,
    unschedulable: Mapping[str, int],
    excluded: int,
) -> str:
    known = sorted(set(all_partition_sizes()) | set(fleet_sizes))
    if k not in known:
        return f"{k} is not a partition size of any platform (sizes: {', '.join(map(str, known))})"
    if servers_offering_k == 0:
        return f"no server in the fleet has a platform with {k}-GPU partitions"
    parts = [f"no {k}-GPU partition free"]
    if unaligned:
        verb = "has" if unaligned == 1 else "have"
        parts.append(
            f"{_plural(unaligned, 'server')} {verb} {k} or more free GPUs but not aligned to a free {k}-GPU partition"
        )
    else:
        parts.append(f"no schedulable server has {_plural(k, 'free GPU')}")
    if unschedulable:
        detail = ", ".join(f"{n} {state}" for state, n in sorted(unschedulable.items()))
        parts.append(f"{_plural(sum(unschedulable.values()), 'server')} not schedulable ({detail})")
    if excluded:
        parts.append(f"{_plural(excluded, 'server')} excluded by the request")
    return "; ".join(parts)


# --- brute-force reference -------------------------------------------------------------------------


def place_bruteforce(servers: Iterable[ServerSnapshot], request: Request, policy: str = BESTFIT) -> Placement | NoFit:
    """Score every partition of every server; the specification `FreeBlockIndex` must match."""
    _check_policy(policy)
    views = [_view(s) for s in servers]
    k = request.gpu_count
    excluded_ids = request.exclude_servers
    rack_load: Counter[str] = Counter()
    if request.tenant is not None:
        for v in views:
            rack_load[v.snapshot.rack] += v.tenant_gpus.get(request.tenant, 0)

    best_key = None
    best = None
    for v in views:
        sid = v.snapshot.server_id
        if sid in excluded_ids:
            continue
        for c in v.candidates:
            if c.size != k:
                continue
            if policy == FIRSTFIT:
                key = (sid, c.partition_id)
            else:
                spread = rack_load[v.snapshot.rack]
                key = (c.damage, -v.occupants, v.free, c.fw_mismatch, c.temp, spread, sid, c.partition_id)
            if best_key is None or key < best_key:
                best_key, best = key, (sid, c)
    if best is not None:
        return _placement(*best)

    unschedulable: Counter[str] = Counter(v.snapshot.state for v in views if not v.snapshot.schedulable)
    offering = [v for v in views if k in v.sizes]
    sched = [v for v in offering if v.snapshot.schedulable]
    excluded = sum(1 for v in views if v.snapshot.schedulable and v.snapshot.server_id in excluded_ids)
    unaligned = sum(1 for v in sched if v.free >= k and v.snapshot.server_id not in excluded_ids)
    fleet_sizes = {s for v in views for s in v.sizes}
    return NoFit(_no_fit_reason(k, fleet_sizes, len(offering), unaligned, unschedulable, excluded))


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown placement policy {policy!r} (known: {', '.join(POLICIES)})")


# --- the incremental index -------------------------------------------------------------------------


class FreeBlockIndex:
    """Offerable (server, partition) blocks by size, bucketed by fit score, updated per server.

    Heap entries are `(fw_mismatch, temp, server_id, partition_id, version, candidate)` in the
    best-fit buckets and `(server_id, partition_id, version, candidate)` in the first-fit heaps. An
    entry is live while its version is the server's current one; a server update bumps the version
    and pushes fresh entries, so nothing is searched for removal.
    """

    def __init__(self, servers: Iterable[ServerSnapshot] = ()) -> None:
        self._views: dict[int, _ServerView] = {}
        self._version: dict[int, int] = {}
        self._clock = 0
        # size -> (damage, -server occupants, server free) -> heap
        self._best: dict[int, dict[tuple[float, int, int], list]] = {}
        self._best_order: dict[int, list[tuple[float, int, int]] | None] = {}  # sorted bucket keys, None = stale
        self._first: dict[int, list] = {}
        # For NoFit reasons without a scan: size -> Counter(free GPUs -> schedulable servers).
        self._free_hist: dict[int, dict[int, int]] = {}
        self._size_servers: dict[int, int] = {}
        self._unschedulable: dict[str, int] = {}
        self._rack_load: dict[str, dict[str, int]] = {}  # tenant -> rack -> GPUs held
        self._racks: dict[str, int] = {}  # rack -> servers in it (the rack-spread early exit)
        self._live = 0
        self._pushed = 0
        for s in servers:
            self.update(s)

    # reading

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, server_id: object) -> bool:
        return server_id in self._views

    def server(self, server_id: int) -> ServerSnapshot:
        return self._views[server_id].snapshot

    def servers(self) -> list[ServerSnapshot]:
        return [v.snapshot for v in self._views.values()]

    def server_ids(self) -> Iterable[int]:
        return self._views.keys()

    def free(self, server_id: int) -> int:
        """The server's free and healthy GPUs."""
        return self._views[server_id].free

    # updating

    def update(self, server: ServerSnapshot) -> None:
        """Replace (or add) one server's snapshot."""
        old = self._views.pop(server.server_id, None)
        if old is not None:
            self._account(old, -1)
        view = _view(server)
        self._clock += 1
        version = self._clock
        sid = server.server_id
        self._views[sid] = view
        self._version[sid] = version
        self._account(view, +1)
        for c in view.candidates:
            buckets = self._best.setdefault(c.size, {})
            key = (c.damage, -view.occupants, view.free)
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = []
                self._best_order[c.size] = None
            heapq.heappush(bucket, (c.fw_mismatch, c.temp, sid, c.partition_id, version, c))
            heapq.heappush(self._first.setdefault(c.size, []), (sid, c.partition_id, version, c))
        self._pushed += 2 * len(view.candidates)
        if self._pushed > 4 * self._live + 20_000:
            self._compact()

    def remove(self, server_id: int) -> None:
        view = self._views.pop(server_id)
        del self._version[server_id]
        self._account(view, -1)

    def reserve(self, placement: Placement, tenant: str | None = None) -> None:
        """Take the placement's GPUs and activate its partition (after its deactivate_first)."""
        view = self._views[placement.server_id]
        if not any(c.partition_id == placement.partition_id for c in view.candidates):
            raise ValueError(f"partition {placement.partition_id} is not free on server {placement.server_id}")
        self.update(with_placement(view.snapshot, placement, tenant))

    def release(self, server_id: int, partition_id: int) -> None:
        """A lease on this partition ended: its GPUs are free again and the partition inactive."""
        snap = self._views[server_id].snapshot
        table = _table(snap.platform_key)
        self.update(with_release(snap, partition_id, table.gpus[table.row_of[partition_id]]))

    def _account(self, view: _ServerView, sign: int) -> None:
        """Add (sign=+1) or take back (-1) one server's share of the counters behind NoFit reasons
        and rack spread. Plain dicts: this runs twice per update, so it must stay cheap."""
        snap = view.snapshot
        for k in view.sizes:
            self._size_servers[k] = self._size_servers.get(k, 0) + sign
            if snap.schedulable:
                hist = self._free_hist.get(k)
                if hist is None:
                    hist = self._free_hist[k] = {}
                _bump(hist, view.free, sign)
        if not snap.schedulable:
            _bump(self._unschedulable, snap.state, sign)
        _bump(self._racks, snap.rack, sign)
        for tenant, n in view.tenant_gpus.items():
            racks = self._rack_load.get(tenant)
            if racks is None:
                racks = self._rack_load[tenant] = {}
            _bump(racks, snap.rack, sign * n)
            if not racks:
                del self._rack_load[tenant]
        self._live += sign * len(view.candidates)

    def _compact(self) -> None:
        """Drop stale heap entries in bulk, so heaps stay proportional to the live candidates."""
        live = self._version
        self._best_order.clear()
        for buckets in self._best.values():
            for key in list(buckets):
                heap = [e for e in buckets[key] if live.get(e[2]) == e[4]]
                if heap:
                    heapq.heapify(heap)
                    buckets[key] = heap
                else:
                    del buckets[key]
        for k, heap in self._first.items():
            kept = [e for e in heap if live.get(e[0]) == e[2]]
            heapq.heapify(kept)
            self._first[k] = kept
        self._pushed = 2 * self._live

    # deciding

    def place(self, request: Request, policy: str = BESTFIT) -> Placement | NoFit:
        k = request.gpu_count
        if policy == BESTFIT:
            found = self._best_fit(k, request)
        else:
            _check_policy(policy)
            found = self._first_fit(k, request.exclude_servers)
        if found is not None:
            return _placement(*found)
        return NoFit(self._reason(request))

    def _best_fit(self, k: int, request: Request) -> tuple[int, _Candidate] | None:
        buckets = self._best.get(k)
        if not buckets:
            return None
        version = self._version
        excluded = request.exclude_servers
        loads = self._rack_load.get(request.tenant) if request.tenant is not None else None
        order = self._best_order.get(k)
        if order is None:
            order = self._best_order[k] = sorted(buckets)
        for key in order:
            heap = buckets.get(key)
            if heap is None:
                continue
            while heap and version.get(heap[0][2]) != heap[0][4]:
                heapq.heappop(heap)
            if not heap:
                del buckets[key]
                self._best_order[k] = None  # `order` stays valid for this loop: it is a copy
                continue
            if not excluded and not loads:
                top = heap[0]
                return top[2], top[5]
            found = self._pick_in_bucket(heap, excluded, loads)
            if found is not None:
                return found
        return None

    def _pick_in_bucket(
        self, heap: list, excluded: frozenset[int], loads: Mapping[str, int] | None
    ) -> tuple[int, _Candidate] | None:
        """Slow path: skip excluded servers, and break (firmware, temperature) ties by rack load.

        Entries are popped in heap order and pushed back afterwards, so the bucket is unchanged.
        Tied entries pop in (server id, partition id) order, so the first one at the lowest rack load
        among them wins, and one at the lowest load any rack of the fleet has for this tenant (0 while
        some rack holds none of its GPUs) wins outright: the popping stops there. On a fleet of
        identical servers the tie is the whole bucket (hundreds of entries), popped in full before.
        """
        version = self._version
        views = self._views
        floor = min(loads.values()) if loads and len(loads) == len(self._racks) else 0
        skipped: list = []
        tied: list = []
        best = None
        best_load = 0
        while heap:
            e = heap[0]
            if version.get(e[2]) != e[4]:
                heapq.heappop(heap)
            elif e[2] in excluded:
                skipped.append(heapq.heappop(heap))
            elif tied and (e[0], e[1]) != (tied[0][0], tied[0][1]):
                break
            else:
                tied.append(heapq.heappop(heap))
                load = loads.get(views[e[2]].snapshot.rack, 0) if loads else 0
                if best is None or load < best_load:
                    best, best_load = e, load
                if load == floor:
                    break
        for e in skipped:
            heapq.heappush(heap, e)
        for e in tied:
            heapq.heappush(heap, e)
        return None if best is None else (best[2], best[5])

    def _first_fit(self, k: int, excluded: frozenset[int]) -> tuple[int, _Candidate] | None:
        heap = self._first.get(k)
        if not heap:
            return None
        version = self._version
        skipped = []
        found = None
        while heap:
            e = heap[0]
            if version.get(e[0]) != e[2]:
                heapq.heappop(heap)
            elif e[0] in excluded:
                skipped.append(heapq.heappop(heap))
            else:
                found = (e[0], e[3])
                break
        for e in skipped:
            heapq.heappush(heap, e)
        return found

    def _reason(self, request: Request) -> str:
        k = request.gpu_count
        hist = self._free_hist.get(k, {})
        unaligned = sum(n for free, n in hist.items() if free >= k)
        excluded = 0
        for sid in request.exclude_servers:
            view = self._views.get(sid)
            if view is None or not view.snapshot.schedulable:
                continue
            excluded += 1
            if k in view.sizes and view.free >= k:
                unaligned -= 1
        fleet_sizes = [s for s, n in self._size_servers.items() if n > 0]
        return _no_fit_reason(k, fleet_sizes, self._size_servers.get(k, 0), unaligned, self._unschedulable, excluded)


def _bump(counts: dict, key: object, delta: int) -> None:
    """counts[key] += delta, dropping keys that reach zero (emptiness means "none" to readers)."""
    n = counts.get(key, 0) + delta
    if n:
        counts[key] = n
    else:
        del counts[key]


# --- entry points ----------------------------------------------------------------------------------


def place(
    fleet: FreeBlockIndex | Iterable[ServerSnapshot], request: Request, policy: str = BESTFIT
) -> Placement | NoFit:
    """Choose a server and partition for `request`, or say why none fits. Reads, never reserves."""
    if isinstance(fleet, FreeBlockIndex):
        return fleet.place(request, policy)
    return place_on_snapshot(fleet, request, policy)


def place_on_snapshot(servers: Iterable[ServerSnapshot], request: Request, policy: str = BESTFIT) -> Placement | NoFit:
    """Convenience for one-off decisions: index the snapshot, then place."""
    return FreeBlockIndex(servers).place(request, policy)


def placements_possible(servers: Iterable[ServerSnapshot]) -> dict[int, int]:
    """For each partition size of the fleet's platforms: how many leases of that size could be placed
    right now, each on its own partition (the capacity strip of the fleet map). Sizes are counted
    independently (eight 1-GPU leases or one 8-GPU lease)."""
    counts: dict[int, int] = {}
    for server in servers:
        avail = 0
        if server.schedulable:
            for module_id, gpu in server.gpus.items():
                if gpu.available:
                    avail |= 1 << module_id
        for size, n in offerable_counts(server.platform_key, avail, server.active_partition_ids):
            counts[size] = counts.get(size, 0) + n
    return dict(sorted(counts.items(), reverse=True))


@lru_cache(maxsize=1 << 14)
def offerable_counts(platform_key: str, avail: int, active: frozenset[int]) -> tuple[tuple[int, int], ...]:
    """((size, how many leases of that size fit at once), ...) on one server with these free and
    healthy GPUs (`avail`, bit m = module m; 0 for a server that is not schedulable) and active
    partitions: the offerable partitions `place` would consider, packed without overlap greedily in
    id order (the platforms' tables are aligned buddy trees, so greedy packing is the maximum)."""
    table = _table(platform_key)
    _, rows = _layout(platform_key, avail, active)
    used: dict[int, int] = {}
    counts = dict.fromkeys(table.size_set, 0)
    for i, _, _ in rows:
        size, mask = table.sizes[i], table.masks[i]
        if used.get(size, 0) & mask:
            continue
        used[size] = used.get(size, 0) | mask
        counts[size] += 1
    return tuple(sorted(counts.items(), reverse=True))
