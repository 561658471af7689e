"""Websocket consumers of the live pages: small, permission-checked, rendering from the database.

The live relay (console/relay.py) sends each page group the audit events that concern it; a
consumer notes what changed, and at most every `FLUSH_S` renders those parts again with the same
template partials as the page and sends them as one JSON message:
`{"type": "fragments", "v": <newest event id>, "html": {element id: outer HTML}}`. The page's small
script (console/static/console/live.js) swaps them in once per animation frame. Because every
message is a render of the database, a duplicate is harmless and a missed one is repaired by the next.

A page connects with `?v=<version it rendered>`; the consumer sends what changed since (or
`{"type": "snapshot"}` when that is too much: the page fetches itself again).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.context_processors import PermWrapper
from django.template.loader import render_to_string

from console import relay
from console.ui.leases import LEASE_PARTS
from console.ui.permissions import can_view
from console.ui.tiles import mark_booting, render_tile
from fleet.models import Gpu, Server
from fleet.overview import fleet_summary, server_detail, server_tiles
from tenants.lease_view import lease_page
from tenants.models import Lease

FLUSH_S = 0.1  # at most 10 messages a second per subscriber
SUMMARY_EVERY_S = 1.0  # legend counts and the capacity strip (they read the whole fleet)
TELEMETRY_EVERY_S = 1.0


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """What the map's and the server page's consumers share: login and permission, groups, the
    version, catch-up, and coalesced flushes."""

    page_groups: list[str] = []

    async def connect(self):
        user = self.scope.get("user")
        if not await database_sync_to_async(can_view)(user):
            await self.close(code=4403)
            return
        if not await database_sync_to_async(self.setup)():
            await self.close(code=4404)
            return
        self.perms = PermWrapper(user)
        self.pending: set = set()
        self.flush_task: asyncio.Task | None = None
        self.flush_at = 0.0
        self.flushing = False
        self.last_flush = 0.0
        self.sent_version = 0
        await relay.ensure_started().wait_ready()
        for group in self.page_groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        query = parse_qs(self.scope.get("query_string", b"").decode())
        version = int(query.get("v", ["0"])[0] or 0)
        self.version = version
        if version:
            missed = await database_sync_to_async(relay.events_since)(version)
            if missed is None:
                self.version = await database_sync_to_async(relay.latest_id)()
                await self.send_json({"type": "snapshot", "v": self.version})
            else:
                for event in missed:
                    self.version = max(self.version, event["id"])
                    self.collect(event)
                await self.caught_up()
                self.schedule()
        else:
            self.version = await database_sync_to_async(relay.latest_id)()
        await self.send_json({"type": "hello", "v": self.version})

    async def disconnect(self, code):
        for group in getattr(self, "page_groups", []):
            await self.channel_layer.group_discard(group, self.channel_name)
        task = getattr(self, "flush_task", None)
        if task is not None:
            task.cancel()

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "ping":
            await self.send_json({"type": "pong", "v": self.version})

    async def relay_events(self, message):
        """From the relay: the events of one batch that concern this page."""
        for event in message["events"]:
            self.version = max(self.version, event["id"])
            self.collect(event)
        self.schedule()

    def due(self, pending: set) -> float:
        """When the next message may go (monotonic): FLUSH_S after the last one sent."""
        return self.last_flush + FLUSH_S

    def schedule(self):
        """Flush what is pending when it is due. A flush waiting for something later (the map's
        once-a-second legend) is moved up when something due sooner arrives (a tile)."""
        if not self.pending:
            return
        when = self.due(self.pending)
        task = self.flush_task
        if task is not None:
            if self.flushing or self.flush_at <= when:
                return
            task.cancel()
        self.flush_at = when
        self.flush_task = asyncio.create_task(self._flush_later(when))

    async def _flush_later(self, when: float):
        me = asyncio.current_task()
        try:
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            self.flushing = True
            pending, self.pending = self.pending, set()
            version = self.version
            message = await self.render_message(pending, version)
            if message:
                await self.send(text_data=message)
                self.last_flush = time.monotonic()  # only what was sent counts against the rate
                self.sent_version = version
        finally:
            if self.flush_task is me:
                self.flush_task = None
                self.flushing = False
        self.schedule()

    async def render_message(self, pending: set, version: int) -> str:
        """The JSON text of one `fragments` message, or "" when there is nothing to send."""
        html = await self.render_pending(pending)
        return json.dumps({"type": "fragments", "v": version, "html": html}) if html else ""

    async def render_pending(self, pending: set) -> dict[str, str]:
        return await database_sync_to_async(self.render)(pending)

    # for subclasses
    def setup(self) -> bool:
        return True

    def collect(self, event: dict) -> None:
        raise NotImplementedError

    async def caught_up(self) -> None:
        pass

    def render(self, pending: set) -> dict[str, str]:
        return {}


class FleetMapConsumer(LiveConsumer):
    """The fleet map: changed servers' tiles as soon as they may go (≤ 10 messages a second); the
    legend and capacity strip, which read the whole fleet, on a clock of their own (at most once a
    second), so a slow legend never holds up a tile."""

    page_groups = ["fleet"]

    def setup(self) -> bool:
        self.last_summary = 0.0
        self.summary_dirty = False
        self.summary_task: asyncio.Task | None = None
        return True

    def collect(self, event: dict) -> None:
        for group in event.get("groups", ()):
            if group.startswith("server-"):
                self.pending.add(int(group[7:]))
        self.summary_dirty = True

    def schedule(self):
        super().schedule()
        if self.summary_dirty and self.summary_task is None:
            self.summary_task = asyncio.create_task(self._summary_later())

    async def disconnect(self, code):
        task = getattr(self, "summary_task", None)
        if task is not None:
            task.cancel()
        await super().disconnect(code)

    async def _summary_later(self):
        try:
            await asyncio.sleep(max(0.0, self.last_summary + SUMMARY_EVERY_S - time.monotonic()))
            self.summary_dirty = False
            self.last_summary = time.monotonic()
            html = await database_sync_to_async(_summary_html, thread_sensitive=False)()
            # The version of the last tiles sent, never a newer one: a page that reconnects with it
            # must still get the tiles of the events after it.
            await self.send_json({"type": "fragments", "v": self.sent_version, "html": html})
        finally:
            self.summary_task = None
        if self.summary_dirty:
            self.summary_task = asyncio.create_task(self._summary_later())

    async def render_message(self, pending: set, version: int) -> str:
        """The changed tiles, rendered and encoded once for every map consumer of the process that
        got the same batch (the first renders on the database thread, the rest await it or find it
        cached)."""
        return await _tiles_once(tuple(sorted(pending)), version)


_TILE_CACHE: dict[tuple, tuple[float, str]] = {}
_TILE_CACHE_S = 1.0
_tile_cache_lock = threading.Lock()


def _tiles_html(ids: tuple[int, ...], version: int) -> str:
    """These servers' tiles as of `version`, as the `fragments` message's JSON text. Every map
    consumer of the process receives the same batch and sends the same tiles (they show no per-user
    buttons): the first renders and encodes, the others reuse it for a second, so fifty subscribers
    cost one render and one encoding, not fifty."""
    key = (ids, version)
    now = time.monotonic()
    with _tile_cache_lock:
        hit = _TILE_CACHE.get(key)
        if hit is not None and now - hit[0] < _TILE_CACHE_S:
            return hit[1]
    html = {f"server-{tile.pk}": str(render_tile(tile)) for tile in mark_booting(server_tiles(list(ids)))}
    html = json.dumps({"type": "fragments", "v": version, "html": html}) if html else ""
    with _tile_cache_lock:
        for k in [k for k, (t, _) in _TILE_CACHE.items() if now - t >= _TILE_CACHE_S]:
            del _TILE_CACHE[k]
        _TILE_CACHE[key] = (now, html)
    return html


_INFLIGHT: dict[tuple, asyncio.Future] = {}


async def _tiles_once(ids: tuple[int, ...], version: int) -> str:
    """The tiles, rendered once for all the consumers on this event loop that got the same batch:
    the first asks the database, the others await its result (or find it cached) without a thread hop."""
    key = (ids, version)
    with _tile_cache_lock:
        hit = _TILE_CACHE.get(key)
    if hit is not None and time.monotonic() - hit[0] < _TILE_CACHE_S:
        return hit[1]
    waiting = _INFLIGHT.get(key)
    if waiting is not None:
        return await asyncio.shield(waiting)
    future = _INFLIGHT[key] = asyncio.get_running_loop().create_future()
    try:
        html = await database_sync_to_async(_tiles_html)(ids, version)
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
        raise
    finally:
        _INFLIGHT.pop(key, None)
    future.set_result(html)
    return html


_SUMMARY: list = [0.0, None]


_summary_lock = threading.Lock()


def _summary_html() -> dict[str, str]:
    """The map's legend and capacity strip, rendered at most once a second per process (one thread
    renders; the others wait for it and take its result)."""
    with _summary_lock:
        if _SUMMARY[1] is not None and time.monotonic() - _SUMMARY[0] < SUMMARY_EVERY_S:
            return _SUMMARY[1]
        data = fleet_summary()
        ctx = {"map": data, "capacity": data.capacity}
        html = {"fleet-legend": render_to_string("console/fleet_map.html#fleet-legend", ctx),
                "fleet-capacity": render_to_string("console/fleet_map.html#fleet-capacity", ctx)}
        _SUMMARY[:] = [time.monotonic(), html]
        return html


class ServerConsumer(LiveConsumer):
    """A server's page: its parts again on any of its events; temperatures as coalesced telemetry."""

    PARTS = ("server-header", "server-partitions", "server-gpus", "server-history", "server-operations")

    def setup(self) -> bool:
        self.server_id = int(self.scope["url_route"]["kwargs"]["pk"])
        self.page_groups = [f"server-{self.server_id}"]
        self.temps: dict[int, float | None] = {}
        return Server.objects.filter(pk=self.server_id).exists()

    def collect(self, event: dict) -> None:
        self.pending.add("all")

    async def caught_up(self) -> None:
        self.pending.add("all")  # a reconnecting page gets its server again, whatever it missed

    async def accept(self, subprotocol=None, headers=None):
        await super().accept(subprotocol, headers)
        self.telemetry_task = asyncio.create_task(self._telemetry())

    async def disconnect(self, code):
        task = getattr(self, "telemetry_task", None)
        if task is not None:
            task.cancel()
        await super().disconnect(code)

    def render(self, pending: set) -> dict[str, str]:
        detail = server_detail(self.server_id)
        ctx = {"d": detail, "perms": self.perms}
        html = {}
        for part in self.PARTS:
            html[f"server-{self.server_id}-{part.removeprefix('server-')}"] = render_to_string(
                f"console/server_detail.html#{part}", ctx
            )
        return html

    def _read_temps(self) -> dict[int, float | None]:
        return dict(Gpu.objects.filter(server_id=self.server_id).values_list("pk", "temperature_c"))

    async def _telemetry(self):
        """Temperature is an observation, not an audited change: read it once a second, send what moved."""
        while True:
            temps = await database_sync_to_async(self._read_temps)()
            changed = {pk: t for pk, t in temps.items() if self.temps.get(pk, "unset") != t}
            if changed and self.temps:
                await self.send_json(
                    {
                        "type": "telemetry",
                        "temps": {str(pk): None if t is None else round(t) for pk, t in changed.items()},
                    }
                )
            self.temps = temps
            await asyncio.sleep(TELEMETRY_EVERY_S)


class LeaseConsumer(LiveConsumer):
    """A lease's page: its parts again on any of its events (state changes, boot phase boundaries,
    conditions). The running boot phase grows in the browser; only boundaries come from here."""

    def setup(self) -> bool:
        self.lease_id = int(self.scope["url_route"]["kwargs"]["pk"])
        self.page_groups = [f"lease-{self.lease_id}"]
        return Lease.objects.filter(pk=self.lease_id).exists()

    def collect(self, event: dict) -> None:
        self.pending.add("all")

    async def caught_up(self) -> None:
        self.pending.add("all")  # a reconnecting page gets its lease again, whatever it missed

    def render(self, pending: set) -> dict[str, str]:
        ctx = {"d": lease_page(self.lease_id), "perms": self.perms}
        return {f"lease-{self.lease_id}-{part.removeprefix('lease-')}":
                render_to_string(f"console/lease_detail.html#{part}", ctx) for part in LEASE_PARTS}
