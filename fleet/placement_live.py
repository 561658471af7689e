"""The process's live placement index: a `FreeBlockIndex` over the whole fleet, kept in memory.

Reading the fleet for every request costs more than deciding; so each process keeps one index and
treats it as a hint that the database arbitrates. A decision is reserved with a compare-and-set on
the GPU rows (`GPU_MACHINE.claim_many`: all free and unlocked, the server schedulable, or nothing),
so a stale index can cost a retry but never a double allocation (invariant 1). How it stays close
to the truth:

* its own reservations are applied at once, and decisions still in flight survive a reload, so the
  threads of one process do not race each other for the same partition;
* a claim that fails marks that partition taken here (someone else holds it, or it is no longer
  free) and looks for what else changed (only that server is read if the fleet was looked at a
  moment ago: within `REFUSED_RELOAD_AFTER_S`, or ten times as long as looking takes). Servers that
  lost free GPUs to someone else since the last look, and the one refused, are avoided for a moment
  (`CONTENDED_S`) when anything else fits: another process is filling them, and best fit would
  otherwise send this one after the same blocks;
* looking is cheap: each server's fingerprint (its state, its free usable GPUs, its occupying
  partitions: `placement_fingerprints`) is read in three aggregate statements, and only the servers
  whose fingerprint changed are read again. The index looks after changes committed by this
  process that give capacity back (a GPU becomes free, a server or partition changes state), every
  `PLACEMENT_INDEX_MAX_AGE_S` for other processes' changes, and when a decision finds nothing (a
  refusal is never made on a view older than `NOFIT_RELOAD_AFTER_S`). Every look but the one
  before a refusal reads without the lock, one thread at a time: the others decide meanwhile
  on the view they have, the claim checking it, instead of waiting (80 ms a look at 768 servers
  under bench/api.py's load, every other create of the process behind it). Each of these used to read
  the whole fleet: on a full fleet, once per request (up to twenty times a second per process, 19-30 ms
  each at 128 servers), and on a large one (1,024 servers), a fifth of a second every two seconds with every
  decision of the process waiting for it;
* what a fingerprint does not show (temperatures, firmware, who holds what, a GPU taken and another
  freed on one server between two looks) is caught by a refused claim, or by the rolling full read:
  each periodic look reads another `1 / FULL_READ_SLICES` of the servers in full. A read of the
  whole fleet at once (a fifth of a second at 1,024 servers, the GIL held most of it) stalled the
  process's requests, which the API's tail latency showed;
* servers the policy ranks equal are taken in a per-process order (a salted rank), so processes
  starting on an empty fleet do not all claim the lowest id.

Several processes placing at once still lose some claims to each other (bench/lease_throughput.py
with BENCH_PROCESSES=2 counts them); each loss is a rolled-back attempt, never a double allocation.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import threading
import time
import zlib
from dataclasses import dataclass, replace

from django.conf import settings
from django.db import transaction

from fleet.models import Partition
from fleet.placement import FreeBlockIndex
from fleet.selectors import partition_pks, placement_fingerprints, placement_fleet, snapshot_fingerprint
from fleet.snapshot import NoFit, Placement, Request
from fleet.states import GPU_MACHINE, PARTITION_MACHINE, SERVER_MACHINE, GpuState, PartitionState

# A refusal right after a reload is trusted; older than this, the fleet is read again first.
NOFIT_RELOAD_AFTER_S = 0.05
# After losing a claim on a server, or seeing it lose free GPUs to another process, place elsewhere for
# this long if anything else fits: that process is filling it (best fit sends every process to the
# same fullest server), and chasing it costs a lost claim and a read per attempt.
CONTENDED_S = 0.5
# A lost claim reads the whole fleet again unless it was read this recently, or within ten times as
# long as that read took (then only that server).
REFUSED_RELOAD_AFTER_S = 0.05
_SID_MASK = (1 << 32) - 1
# A decision whose transaction never reported its commit (it rolled back) stops being applied after this.
INFLIGHT_EXPIRY_S = 10.0
# Each periodic look (every PLACEMENT_INDEX_MAX_AGE_S while the process decides) also reads this
# fraction of the servers in full, whatever their fingerprints: every server within so many looks.
FULL_READ_SLICES = 16


@dataclass(frozen=True)
class Decision:
    """A placement taken in the index for one reservation attempt. The attempt ends with `done()`
    (claimed), `refused()` (the database said no) or `abandon()` (an error)."""

    token: int
    placement: Placement
    hostname: str
    gpu_ids: tuple[int, ...]
    partition_pk: int


class LivePlacementIndex:
    def __init__(self) -> None:
        # Reentrant: a look (`_sync`) takes it for its short steps whether or not its caller holds it.
        self._lock = threading.RLock()
        self._looking = False  # a thread is looking for changes without the lock (`_look_if_due`)
        self._index: FreeBlockIndex | None = None
        self._gpu_ids: dict[tuple[int, int], int] = {}
        self._partition_pks: dict[int, dict[int, int]] = {}  # server id -> partition id -> pk (static)
        self._loaded_at = 0.0  # when the view was last brought up to date (a full read or a sync)
        self._load_s = 0.0  # how long the last read of the fleet took
        # Each server's fingerprint as the database last showed it (server id -> selectors.Fingerprint).
        self._fingerprints: dict[int, tuple] = {}
        self._rolled_to = 0  # the rolling full read's last server id (`_sync`)
        self._dirty = True
        # Decisions whose transaction has not ended: (placement, tenant, started). A read of the
        # database does not show them yet, so they are applied again after every read.
        self._inflight: dict[int, tuple[Placement, str | None, float]] = {}
        self._contended: dict[int, float] = {}  # server id -> until (monotonic)
        # Reads of the database are numbered when they start; a server's last change here (a read
        # applied, a commit of ours) is numbered too, and a read older than that is not applied:
        # threads read concurrently and must not put an older view over a newer one.
        self._seq = itertools.count(1)
        self._server_seq: dict[int, int] = {}  # index server id -> number of its last change here
        self._fleet_seq = 0  # number of the last read of the whole fleet (a change to every server)
        self._tokens = itertools.count(1)
        # Servers the policy ranks equal are taken in an order of this process's own (the index sees
        # server ids with a salted rank in front), so processes starting on an empty rack spread
        # over different servers instead of all claiming the lowest id. 0: plain id order (tests).
        self.salt: int | None = None  # None: drawn per process (forked workers must differ); 0: id order
        self._drawn_salt = 0
        self._pid = os.getpid()
        self.loads = 0  # reads of the whole fleet, for tests and benchmarks
        self.syncs = 0  # looks for changes by fingerprint (`_sync`)
        self.refusals = 0  # claims the database refused (another process won the partition)

    def invalidate(self) -> None:
        """Look for changes in the fleet before the next decision."""
        self._dirty = True

    def refresh(self) -> None:
        """Read the fleet now (a process warming up before it takes requests)."""
        self._forked()
        with self._lock:
            self._load()

    def reset(self) -> None:
        """Forget everything (tests: each starts on another database state)."""
        with self._lock:
            self._forget()
            self.loads = self.syncs = self.refusals = 0

    def _forget(self) -> None:
        self._index = None
        self._inflight.clear()
        self._contended.clear()
        self._partition_pks.clear()
        self._server_seq.clear()
        self._fingerprints.clear()
        self._rolled_to = 0
        self._dirty = True

    def _vid(self, sid: int) -> int:
        """The id the index knows server `sid` by: this process's rank for it, then the id."""
        salt = self._drawn_salt if self.salt is None else self.salt
        rank = zlib.crc32(b"%d:%d" % (salt, sid)) & 0xFFFFF if salt else 0
        return rank << 32 | sid

    def _forked(self) -> None:
        """A forked child starts its own index: new lock, new order, nothing inherited."""
        if self._pid != os.getpid() or not self._drawn_salt:
            self._pid = os.getpid()
            self._lock = threading.RLock()
            self._looking = False
            self._drawn_salt = random.SystemRandom().getrandbits(31) or 1
            self._forget()

    def choose(self, request: Request) -> Decision | NoFit:
        """The best placement for `request` as this process knows the fleet, taken here at once."""
        self._forked()
        if request.exclude_servers:
            request = replace(request, exclude_servers=frozenset(map(self._vid, request.exclude_servers)))
        self._look_if_due()
        with self._lock:
            if self._index is None:
                self._load()
            choice = self._place_avoiding_contended(request)
            if isinstance(choice, NoFit) and time.monotonic() - self._loaded_at > NOFIT_RELOAD_AFTER_S:
                self._sync()  # under the lock: a refusal is never made on an old view
                choice = self._index.place(request)
            if isinstance(choice, NoFit):
                return choice
            vid = choice.server_id
            sid = vid & _SID_MASK
            partition_pk = self._partition_pk(sid, choice.partition_id)  # before anything is taken here
            self._index.reserve(choice, request.tenant)
            token = next(self._tokens)
            self._inflight[token] = (choice, request.tenant, time.monotonic())
            return Decision(
                token=token,
                placement=replace(choice, server_id=sid),
                hostname=self._index.server(vid).hostname,
                gpu_ids=tuple(self._gpu_ids[sid, m] for m in choice.gpu_module_ids),
                partition_pk=partition_pk,
            )

    def _look_if_due(self) -> None:
        """Look for changes (`_sync`) if the view is older than PLACEMENT_INDEX_MAX_AGE_S or a change
        committed here asks for it, and no other thread is looking. The reads run without the lock:
        a look takes tens of milliseconds on a large fleet (80 ms at 768 servers on two busy cores,
        bench/api.py), and every other decision of the process waited for it. Meanwhile they decide
        on the view they have, a hint the claim checks."""
        with self._lock:
            if self._index is None or self._looking:
                return
            if time.monotonic() - self._loaded_at > settings.PLACEMENT_INDEX_MAX_AGE_S:
                rolling = True
            elif self._dirty:
                rolling = False
            else:
                return
            self._looking = True
        self._look(rolling=rolling)

    def _look(self, *, rolling: bool = False) -> None:
        """`_sync` without the lock, by the thread that set `_looking` (under the lock)."""
        try:
            self._sync(rolling=rolling)
        finally:
            self._looking = False

    def _partition_pk(self, sid: int, partition_id: int) -> int:
        """The Partition row's pk (read once per server: the rows never change once created)."""
        pks = self._partition_pks.get(sid)
        if pks is None or partition_id not in pks:
            pks = self._partition_pks[sid] = partition_pks(sid)
        if partition_id not in pks:  # registration creates every row of the platform's table
            raise Partition.DoesNotExist(f"server {sid} has no row for partition {partition_id}")
        return pks[partition_id]

    def _place_avoiding_contended(self, request: Request) -> Placement | NoFit:
        if self._contended:
            now = time.monotonic()
            self._contended = {sid: until for sid, until in self._contended.items() if until > now}
            if self._contended:
                avoid = request.exclude_servers | frozenset(self._contended)
                choice = self._index.place(replace(request, exclude_servers=avoid))
                if not isinstance(choice, NoFit):
                    return choice
        return self._index.place(request)

    def done(self, decision: Decision) -> None:
        """The claim succeeded: the index already shows it; once the transaction commits, reads of
        the database show it too. (After a rollback the entry expires: INFLIGHT_EXPIRY_S.)"""
        transaction.on_commit(lambda: self._finish(decision.token))

    def abandon(self, decision: Decision) -> None:
        """The claim failed with an error (its transaction rolls back): the next read of the fleet
        shows the truth for that partition."""
        self._finish(decision.token)

    def _finish(self, token: int) -> None:
        with self._lock:
            entry = self._inflight.pop(token, None)
            if entry is not None:  # committed: a read started before now does not show it
                placement = entry[0]
                self._server_seq[placement.server_id] = next(self._seq)
                # The database now shows these GPUs taken (the partition is activated later, by a
                # worker): so should the fingerprint, or the next look would read this server again.
                sid = placement.server_id & _SID_MASK
                if sid in self._fingerprints:
                    state, free, partitions = self._fingerprints[sid]
                    taken = sum(1 << m for m in placement.gpu_module_ids)
                    self._fingerprints[sid] = (state, free & ~taken, partitions)

    def refused(self, decision: Decision) -> None:
        """The database refused the claim: another process reserved on that server (or the server
        changed). Look for what changed in the fleet (or read only that server, if the fleet was looked
        at a moment ago): what else the other processes took is then known too, and the servers they
        are filling are avoided for a moment. The refused partition stays taken here, as its holder may
        not have committed yet."""
        sid = decision.placement.server_id
        vid = self._vid(sid)
        refused = replace(decision.placement, server_id=vid)
        with self._lock:
            self.refusals += 1
            self._inflight.pop(decision.token, None)
            self._contended[vid] = time.monotonic() + CONTENDED_S
            # At most a tenth of the time spent reading the fleet, however large it is.
            reload_after = max(REFUSED_RELOAD_AFTER_S, 10 * self._load_s)
            look = (self._index is not None and not self._looking
                    and time.monotonic() - self._loaded_at > reload_after)
            if look:
                self._looking = True
        if look:
            self._look()
            with self._lock:
                if self._index is not None and vid in self._index:
                    with contextlib.suppress(ValueError):  # already shown taken
                        self._index.reserve(refused, None)
            return
        seq = next(self._seq)
        fresh = placement_fleet([sid])
        with self._lock:
            known = max(self._server_seq.get(vid, 0), self._fleet_seq)
            if self._index is None or vid not in self._index or known > seq:
                return  # gone, or something newer is known here: keep the refused partition taken
            self._apply_read([sid], fresh, seq, also_taken=[(refused, None)])

    def _apply_read(self, sids: list[int], fresh, seq: int, also_taken=()) -> dict[int, int]:
        """Put read number `seq` of the servers `sids` in the index (under the lock): each replaced by
        what was read, or removed when it is gone; then the decisions in flight on them, and
        `also_taken` (placement, tenant) pairs, taken again. Returns the replaced servers' free GPUs
        before the read (index id -> free)."""
        read = {s.server_id: s for s in fresh.servers}
        before = {}
        for sid in sids:
            vid = self._vid(sid)
            if max(self._server_seq.get(vid, 0), self._fleet_seq) > seq:
                continue  # changed here (a commit of ours, a newer read) since this read started
            if vid in self._index:
                before[vid] = self._index.free(vid)
                self._index.remove(vid)
            self._fingerprints.pop(sid, None)
            if sid in read:
                self._index.update(replace(read[sid], server_id=vid))
                self._fingerprints[sid] = snapshot_fingerprint(read[sid])
            self._server_seq[vid] = seq
        self._gpu_ids.update(fresh.gpu_ids)
        inflight = [(p, t) for p, t, _ in self._live_inflight() if p.server_id in before]
        for placement, tenant in [*also_taken, *inflight]:
            if placement.server_id in self._index:
                with contextlib.suppress(ValueError):  # already shown taken
                    self._index.reserve(placement, tenant)
        return before

    def _live_inflight(self) -> list[tuple[Placement, str | None, float]]:
        """In-flight decisions, dropping those whose transaction rolled back long ago."""
        now = time.monotonic()
        expired = [t for t, (_, _, started) in self._inflight.items() if now - started > INFLIGHT_EXPIRY_S]
        for token in expired:
            del self._inflight[token]
        return list(self._inflight.values())

    def _load(self) -> None:
        """Read the whole fleet (under the lock)."""
        seq, started = next(self._seq), time.monotonic()
        fleet = placement_fleet()
        index = FreeBlockIndex(replace(s, server_id=self._vid(s.server_id)) for s in fleet.servers)
        self._fingerprints = {s.server_id: snapshot_fingerprint(s) for s in fleet.servers}
        self._server_seq, self._fleet_seq = {}, seq
        for placement, tenant, _ in self._live_inflight():  # still being reserved by our threads
            if placement.server_id in index:
                with contextlib.suppress(ValueError):  # already taken in the database: nothing to keep
                    index.reserve(placement, tenant)
        if self._index is not None:
            self._avoid_filled_elsewhere(self._index, index)
        self._index, self._gpu_ids = index, fleet.gpu_ids
        self._loaded_at = time.monotonic()
        self._load_s = self._loaded_at - started
        self._dirty = False
        self.loads += 1

    def _sync(self, *, rolling: bool = False) -> None:
        """Bring the view up to date by fingerprint: read again only the servers whose fingerprint
        changed since they were last read, or the whole fleet when most of them did.
        `rolling` (the periodic look): read the next `1 / FULL_READ_SLICES` of the servers too, in id
        order, so that what no fingerprint shows is read within FULL_READ_SLICES periodic looks,
        a slice at a time instead of the whole fleet at once.
        With or without the lock held: it takes the lock for what it reads from the view and for
        applying what it read, and a read numbered before a server's last change here is not
        applied to it (`_apply_read`)."""
        started = time.monotonic()
        with self._lock:
            seq = next(self._seq)
            self._dirty = False  # a change committed from here on asks for another look
            known, rolled_to = dict(self._fingerprints), self._rolled_to
            self.syncs += 1
        now = placement_fingerprints()
        changed = [sid for sid in now.keys() | known.keys() if now.get(sid) != known.get(sid)]
        if 2 * len(changed) > len(now):
            with self._lock:
                self._load()
            return
        if rolling and now:
            ids = sorted(now)
            after = [sid for sid in ids if sid > rolled_to] or ids
            chunk = after[:-(-len(ids) // FULL_READ_SLICES)]
            rolled_to = chunk[-1]
            changed = sorted({*changed, *chunk})
        fresh = placement_fleet(changed) if changed else None
        with self._lock:
            if self._index is None:  # forgotten meanwhile (tests): the next decision reads it all
                return
            self._rolled_to = rolled_to
            if changed:
                old_free = self._apply_read(changed, fresh, seq)
                until = time.monotonic() + CONTENDED_S
                for vid, free in old_free.items():  # another process is filling it: see _avoid_filled_elsewhere
                    if vid in self._index and self._index.free(vid) < free:
                        self._contended[vid] = until
            self._loaded_at = time.monotonic()
            self._load_s = self._loaded_at - started

    def _avoid_filled_elsewhere(self, old: FreeBlockIndex, new: FreeBlockIndex) -> None:
        """Servers with fewer free GPUs than this process knew, though its own claims were in the old
        view, are being filled by another process: best fit would send this one there too, to race it
        for the same blocks. Avoid them for a moment."""
        until = time.monotonic() + CONTENDED_S
        for vid in new.server_ids():
            if vid in old and new.free(vid) < old.free(vid):
                self._contended[vid] = until


live_index = LivePlacementIndex()


def fleet_changed() -> None:
    """Servers were added or removed: read the fleet again now and once the change commits."""
    live_index.invalidate()
    transaction.on_commit(live_index.invalidate)


def _on_gpu_change(to: str) -> None:
    if to == GpuState.FREE:  # capacity came back; reservations (→ reserved) are already applied
        live_index.invalidate()


def _on_server_change(to: str) -> None:
    live_index.invalidate()


def _on_partition_change(to: str) -> None:
    # Activations are applied with the reservation; a partition becoming inactive or failed (clean-up,
    # the reconciler) changes what may be activated next.
    if to in (PartitionState.INACTIVE, PartitionState.FAILED):
        live_index.invalidate()


GPU_MACHINE.subscribe(_on_gpu_change)
SERVER_MACHINE.subscribe(_on_server_change)
PARTITION_MACHINE.subscribe(_on_partition_change)
