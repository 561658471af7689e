"""The live relay: the audit log, read in the ASGI process, fanned out to the pages' Channels groups.

Every change writes its AuditEvent row in the same transaction, from whichever process made it (the
web process, a Celery worker, the health watcher, a command). One relay per ASGI process reads the
rows after the last one it sent and sends each page group (`fleet`, `server-<id>`, `lease-<id>`, as
the apps' resolvers say: `realtime.register_group_resolver`) one message with its events, through
console/realtime.py. PostgreSQL wakes it with LISTEN/NOTIFY (console.audit NOTIFYs in the writing
transaction, delivered at commit); on SQLite it polls every `POLL_S`.

The event id is the version: every message carries the ids, a page renders with the newest id it
has seen, and a reconnecting page sends it back (`events_since`) to get what it missed or, when
that is too much, a fresh snapshot. Consumers render from the database, so an event delivered twice
re-renders the same thing: nothing is lost or applied twice.

On PostgreSQL ids are taken before commit, so a row with a smaller id can commit after a larger
one: ids skipped over are remembered as gaps and read again for `GAP_TTL_S`.

With the in-memory channel layer each process relays to its own consumers. With a shared layer
(Redis) one relay in the fleet holds the `console.relay` lock and the others stand by.

Infrastructure: imports no app.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import DatabaseError, connections, router
from django.db.models import Max, Q

from console import locks, realtime
from console.audit import NOTIFY_CHANNEL
from console.models import AuditEvent

log = logging.getLogger(__name__)

POLL_S = 0.1  # SQLite: how often to look for new rows (one indexed SELECT)
LISTEN_TIMEOUT_S = 1.0  # PostgreSQL: read anyway this often (a lost notification costs at most this)
BATCH = 2000
GAP_TTL_S = 30.0
CATCH_UP_LIMIT = 500  # a reconnect that missed more than this gets a fresh snapshot instead
STANDBY_RETRY_S = 5.0
FIELDS = ("id", "verb", "target_type", "target_id", "parent_type", "parent_id", "after")


def latest_id() -> int:
    return AuditEvent.objects.aggregate(v=Max("id"))["v"] or 0


def _rows(q: Q, limit: int) -> list[dict]:
    return [dict(zip(FIELDS, row, strict=True))
            for row in AuditEvent.objects.filter(q).order_by("id").values_list(*FIELDS)[:limit]]


def events_since(version: int, limit: int | None = None) -> list[dict] | None:
    """The events after `version` with their page groups, or None when there are more than `limit`
    (the page should take a fresh snapshot instead)."""
    limit = CATCH_UP_LIMIT if limit is None else limit
    rows = _rows(Q(id__gt=version), limit + 1)
    if len(rows) > limit:
        return None
    realtime.page_groups(rows)
    return rows


class Relay:
    """One per process: a thread that reads the log and hands batches to the ASGI event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, layer) -> None:
        self.loop = loop
        self.layer = layer
        self.last = 0
        self.gaps: dict[int, float] = {}
        self.sent = 0
        self.stopped = threading.Event()
        self.ready = threading.Event()  # `last` read: events after it will be relayed
        self.thread = threading.Thread(target=self._run, name="live-relay", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Until the relay has read where it starts, so that a page which reads its version after this
        misses nothing (a new relay's thread may not have run yet)."""
        deadline = time.monotonic() + timeout
        while not self.ready.is_set() and self.thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # the thread
    def _run(self) -> None:
        try:
            self._prepare_connection()
            # From here on; what a page missed before comes from its own catch-up (`events_since`).
            self.last = self._latest_id()
            self.ready.set()
            if isinstance(self.layer, InMemoryChannelLayer):
                self._relay()
            else:
                while not self.stopped.is_set():
                    with locks.try_lock("console.relay") as held:
                        if held:
                            self.last = max(self.last, self._latest_id())
                            self._relay()
                    self.stopped.wait(STANDBY_RETRY_S)
        except Exception:
            log.exception("live relay stopped")
        finally:
            connections.close_all()

    def _prepare_connection(self) -> None:
        connection = connections[router.db_for_read(AuditEvent)]
        if connection.vendor == "sqlite" and "mode=memory" in str(connection.settings_dict["NAME"]):
            # Tests' shared-cache in-memory database: table locks fail at once (SQLITE_LOCKED, no busy
            # wait), for this reader and for writers. Files (WAL) and PostgreSQL need nothing.
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA read_uncommitted = true")

    def _latest_id(self) -> int:
        """The log's newest id; a failed read (the database busy or restarting) is tried again, since a
        relay that stops leaves every page of this process without live updates."""
        while True:
            try:
                return latest_id()
            except DatabaseError:
                if self.stopped.wait(POLL_S):
                    raise
                log.warning("live relay: reading the log's end failed; again in a moment", exc_info=True)

    def _relay(self) -> None:
        connection = connections[router.db_for_read(AuditEvent)]
        listener = self._listen() if connection.vendor == "postgresql" else None
        try:
            while not self.stopped.is_set() and not self.loop.is_closed():
                self.pump()
                if listener is not None:
                    for _ in listener.notifies(timeout=LISTEN_TIMEOUT_S, stop_after=1):
                        pass
                else:
                    self.stopped.wait(POLL_S)
        finally:
            if listener is not None:
                listener.close()

    def _listen(self):
        import psycopg

        params = connections[router.db_for_read(AuditEvent)].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        conn = psycopg.connect(**params, autocommit=True)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return conn

    def pump(self) -> int:
        """Read what is new (and the gaps) and send it; returns how many events went out."""
        now = time.monotonic()
        self.gaps = {i: t for i, t in self.gaps.items() if now - t < GAP_TTL_S}
        q = Q(id__gt=self.last)
        if self.gaps:
            q |= Q(id__in=list(self.gaps))
        total = 0
        while not self.loop.is_closed():
            try:
                rows = _rows(q, BATCH)
                by_group = realtime.page_groups(rows) if rows else {}
            except DatabaseError:
                log.warning("live relay: reading the log failed; again in a moment", exc_info=True)
                break
            if not rows:
                break
            seen = {r["id"] for r in rows}
            top = max(seen)
            if top > self.last:
                if top - self.last < 10 * BATCH:
                    for i in range(self.last + 1, top):
                        if i not in seen:
                            self.gaps.setdefault(i, now)
                self.last = top
            for i in seen:
                self.gaps.pop(i, None)
            self._send(by_group, len(rows))
            total += len(rows)
            if len(rows) < BATCH:
                break
            q = Q(id__gt=self.last)
        self.sent += total
        return total

    def _send(self, by_group: dict[str, list[dict]], count: int) -> None:
        if not by_group:
            return
        sending = realtime.relay_send(self.layer, by_group)
        try:
            future = asyncio.run_coroutine_threadsafe(sending, self.loop)
        except RuntimeError:  # the loop closed since `pump` looked (its server stopping): no page left
            sending.close()
            raise
        try:
            future.result(timeout=10)
        except Exception:
            log.exception("live relay: sending %d events failed", count)


_relays: dict[int, Relay] = {}
_lock = threading.Lock()


def ensure_started() -> Relay:
    """Start this process's relay on the running event loop (the ASGI server's) if it is not running.
    Called by the websocket consumers on connect, from the event loop."""
    loop = asyncio.get_running_loop()
    with _lock:
        relay = _relays.get(id(loop))
        if relay is None or not relay.thread.is_alive():
            relay = _relays[id(loop)] = Relay(loop, get_channel_layer())
            relay.start()
        return relay


def stop_all() -> None:
    """Stop every relay of this process (tests)."""
    with _lock:
        relays = list(_relays.values())
        _relays.clear()
    for relay in relays:
        relay.stop()
    for relay in relays:
        if relay.thread.is_alive():
            relay.thread.join(timeout=LISTEN_TIMEOUT_S + 2)
