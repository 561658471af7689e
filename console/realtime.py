"""The only module that sends Channels group messages. Infrastructure: imports no app.

Services publish after commit. Groups: `<app>.<collection>` (e.g. `fleet.servers`) and
`<app>.<model>.<pk>` (e.g. `fleet.server.7`). A group receives `events.push` messages, each with
the list of one transaction's events that concern it; consumers turn them into the HTML fragments
the user may see.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

# Which collection group an object's events also go to, by model label. Each app registers its
# own models (`register_collections` in its AppConfig's ready()), so this module names none.
COLLECTION_GROUPS: dict[str, str] = {"console.operation": "console.operations"}


def register_collections(groups: dict[str, str]) -> None:
    """Model label → the collection group its events also go to (e.g. a GPU's → its app's servers)."""
    COLLECTION_GROUPS.update(groups)


def object_group(model_label: str, pk: Any) -> str:
    return f"{model_label}.{pk}"


def groups_for(payload: dict) -> list[str]:
    groups = [object_group(payload["target_type"], payload["target_id"])]
    if payload.get("parent_type"):
        groups.append(object_group(payload["parent_type"], payload["parent_id"]))
    collection = COLLECTION_GROUPS.get(payload["target_type"])
    if collection:
        groups.append(collection)
    return groups


def publish_many(messages: list[tuple[str, dict]]) -> None:
    """One transaction's events: each group they concern gets one `events.push` message listing its
    events in order (a lease reservation touches five to ten objects; a message per event and group
    would be ten to thirty channel-layer sends). Never raises into a service: a dead channel layer
    must not undo a committed change.

    The in-memory layer is only ever read by consumers on this process's event loop, so it is sent to
    through `async_to_sync` (which, under the ASGI server, runs it on that loop). Any other layer
    (Redis) is sent to from one long-lived publisher loop per process, without waiting: a plain
    thread's `async_to_sync` starts an event loop per call, which costs more than the sends."""
    layer = get_channel_layer()
    if layer is None or not messages:
        return
    by_group: dict[str, list[dict]] = {}
    for topic, payload in messages:
        for group in groups_for(payload):
            by_group.setdefault(group, []).append({"topic": topic, "payload": payload})
    try:
        if isinstance(layer, InMemoryChannelLayer):
            # Its groups live in this process: when none of these has a member (a worker process,
            # a command), sending would do nothing, and the hop into an event loop costs more than
            # the rest of a lease request's bookkeeping.
            if any(layer.groups.get(g) for g in by_group):
                async_to_sync(_send)(layer, by_group)
        else:
            _publisher().submit(layer, by_group)
    except Exception:
        log.exception("realtime publish of %d events failed", len(messages))


async def _send(layer, by_group: dict[str, list[dict]], message_type: str = "events.push") -> None:
    """Send each group one message of `message_type` with its events; failures are logged per group."""
    groups = list(by_group)
    results = await asyncio.gather(
        *(layer.group_send(g, {"type": message_type, "events": by_group[g]}) for g in groups),
        return_exceptions=True,
    )
    for group, result in zip(groups, results, strict=True):
        if isinstance(result, Exception):
            log.error("realtime publish (%s) to %s failed: %s", message_type, group, result)


class _Publisher:
    """One long-lived event loop per process that sends, one transaction's messages at a time, in
    submission order: the caller does not wait, and the channel layer's connection pool is never
    asked for more than one batch's sends at once (fire-and-forget sends would exhaust it)."""

    MAX_QUEUED = 10_000  # beyond this the layer is not keeping up: drop, loudly (pushes are best-effort)

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.queue: asyncio.Queue | None = None
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.queue = asyncio.Queue()
            self.loop.create_task(self._drain())
            started.set()
            self.loop.run_forever()

        threading.Thread(target=run, name="realtime-publisher", daemon=True).start()
        started.wait()

    async def _drain(self) -> None:
        while True:
            layer, by_group, flushed = await self.queue.get()
            if layer is not None:
                try:
                    await _send(layer, by_group)
                except Exception:
                    log.exception("realtime publish failed")
            if flushed is not None:
                flushed.set()

    def submit(self, layer, by_group: dict[str, list[dict]]) -> None:
        if self.queue.qsize() >= self.MAX_QUEUED:
            log.error("realtime publisher is %d batches behind: dropping a push", self.MAX_QUEUED)
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (layer, by_group, None))

    def flush(self, timeout: float) -> None:
        flushed = threading.Event()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (None, None, flushed))
        flushed.wait(timeout)


_publisher_instance: _Publisher | None = None
_publisher_lock = threading.Lock()


def _publisher() -> _Publisher:
    """This process's publisher, started on first use (and again in a forked child, where the
    parent's thread does not exist)."""
    global _publisher_instance
    with _publisher_lock:
        if _publisher_instance is None or _publisher_instance.pid != os.getpid():
            _publisher_instance = _Publisher()
        return _publisher_instance


def flush(timeout: float = 5.0) -> None:
    """Wait until what this process submitted before has been sent (tests, shutdown)."""
    if _publisher_instance is not None and _publisher_instance.pid == os.getpid():
        _publisher_instance.flush(timeout)


def publish_many_on_commit(messages: list[tuple[str, dict]]) -> None:
    transaction.on_commit(lambda: publish_many(messages))


# ----------------------------------------------------------------------------- the live relay's side
# The relay (console/relay.py) reads the audit log and sends each page group the events that concern
# it; apps say which groups an event concerns (`register_group_resolver`), so this module names none.
GroupResolver = Callable[[list[dict]], dict[int, set[str]]]
GROUP_RESOLVERS: list[GroupResolver] = []


def register_group_resolver(resolver: GroupResolver) -> None:
    """`resolver(events)` → {event id: page groups} (e.g. fleet's: `fleet`, `server-<id>`). Called
    once per relayed batch with every event of the batch: it should read the database once, not per event."""
    if resolver not in GROUP_RESOLVERS:
        GROUP_RESOLVERS.append(resolver)


def page_groups(events: list[dict]) -> dict[str, list[dict]]:
    """Each page group and the events (in id order) it receives; each event lists its groups. A
    resolver's error propagates: the relay reads the batch again rather than send it to no one."""
    groups_of: dict[int, set[str]] = {e["id"]: set() for e in events}
    for resolver in GROUP_RESOLVERS:
        for event_id, groups in resolver(events).items():
            groups_of.setdefault(event_id, set()).update(groups)
    by_group: dict[str, list[dict]] = {}
    for e in events:
        e["groups"] = sorted(groups_of.get(e["id"], ()))
        for group in e["groups"]:
            by_group.setdefault(group, []).append(e)
    return by_group


async def relay_send(layer, by_group: dict[str, list[dict]]) -> None:
    """Send each page group one `relay.events` message with its events (the relay's only send)."""
    await _send(layer, by_group, "relay.events")
