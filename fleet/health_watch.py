"""The long-running health consumer: every agent's WatchHealth stream into `gpu_record_health`.

A fabric-manager restart (HealthKind.FABRIC_MANAGER_RESTARTED, module id 0) goes to
`fleet.fabric_replay.fabric_manager_replay` instead: the restarted fabric manager gets the
database's active partitions back within its 60 s window, without waiting for the reconciler.

`watch_fleet_health(stop_event)` blocks until `stop_event` is set. It keeps one thread per server
with an agent endpoint, each holding that agent's health stream open (`agent_for(server)
.watch_health()`), feeding every event to `fleet.health.gpu_record_health`, and re-opening the
stream with exponential backoff when it drops (AgentUnavailable, a deadline, the agent closing
it). Every `rescan_s` seconds it re-reads the servers: new ones get a watcher, removed ones (or
ones whose endpoint was cleared or changed) have theirs stopped or restarted.

One thread per server is fine up to about a hundred servers (each thread mostly waits on its
stream). Beyond that, subscribe once per multiplexing endpoint instead (WatchHealth without a node
key returns every host's events) and route by `event.hostname`.

Run it with `manage.py watchhealth` (the Procfile's `health` process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from django.db import close_old_connections, connection

from console.audit import Actor
from console.models import Source
from console.tasks_base import DATABASE_TRANSIENT
from fleet.agents import agent_for
from fleet.fabric_replay import fabric_manager_replay
from fleet.health import gpu_record_health
from fleet.models import Server
from hardware.agent_client import AgentStream
from hardware.exceptions import HardwareError
from hardware.types import HealthEvent, HealthKind

log = logging.getLogger(__name__)

RESCAN_S = 10.0  # how often new, removed or re-addressed servers are noticed
BACKOFF_S = 0.5  # first wait before re-opening a dropped stream; doubles up to BACKOFF_MAX_S
BACKOFF_MAX_S = 30.0
HEALTHY_STREAM_S = 30.0  # a stream that lived this long resets the backoff
JOIN_TIMEOUT_S = 5.0
DB_RETRIES = 5  # a locked or restarting database
ACTOR = Actor.system("health-watch", source=Source.AGENT)


class ServerHealthWatch:
    """One server's health stream, in its own thread, re-opened with backoff until stopped."""

    def __init__(self, server: Server, *, actor: Actor = ACTOR, backoff_s: float = BACKOFF_S) -> None:
        self.server, self.actor, self.backoff_s = server, actor, backoff_s
        self.endpoint = server.agent_endpoint
        self._stop = threading.Event()
        self._stream: AgentStream | None = None
        self._lock = threading.Lock()
        self.events = 0  # handled: recorded by gpu_record_health or replayed (tests, diagnostics)
        self.connects = 0  # streams opened
        self.failures = 0  # streams that failed (agent unavailable, deadline, refused)
        self._thread = threading.Thread(target=self._run, name=f"health-{server.hostname}", daemon=True)

    def start(self) -> ServerHealthWatch:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Ask the thread to end: cancels the open stream (from any thread)."""
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: health watcher did not stop within %.0f s", self.server.hostname, timeout)

    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                opened = time.monotonic()
                try:
                    self._follow()
                except HardwareError as exc:
                    self.failures += 1
                    log.warning("%s: health stream: %s", self.server.hostname, exc)
                if self._stop.is_set():
                    break
                if time.monotonic() - opened >= HEALTHY_STREAM_S:
                    attempt = 0
                delay = min(self.backoff_s * 2**attempt, BACKOFF_MAX_S)
                attempt += 1
                log.info("%s: re-opening the health stream in %.1f s", self.server.hostname, delay)
                self._stop.wait(delay)
        finally:
            connection.close()  # this thread's database connection

    def _follow(self) -> None:
        """Open the stream and record its events until it ends (stop, deadline, agent gone)."""
        stream = agent_for(self.server).watch_health()
        with self._lock:
            self._stream = stream
        if self._stop.is_set():  # stopped while opening
            stream.cancel()
        self.connects += 1
        try:
            for event in stream:
                self._record(event)
        finally:
            with self._lock:
                self._stream = None
            stream.cancel()

    def _record(self, event) -> None:
        """Record one event; a transient database error is retried (the service is idempotent)."""
        for attempt in range(DB_RETRIES + 1):
            close_old_connections()  # a long-lived thread: drop a connection the database closed
            try:
                self._handle(event)
                self.events += 1
                return
            except DATABASE_TRANSIENT as exc:
                if attempt == DB_RETRIES or self._stop.is_set():
                    log.error("%s: could not record health event %s: %s", self.server.hostname, event, exc)
                    return
                self._stop.wait(self.backoff_s * 2**attempt)
            except Exception:  # one bad event must not end the watch
                log.exception("%s: could not record health event %s", self.server.hostname, event)
                return


    def _handle(self, event: HealthEvent) -> None:
        if event.kind is not HealthKind.FABRIC_MANAGER_RESTARTED:
            gpu_record_health(server=self.server, event=event, actor=self.actor)
        elif event.hostname and event.hostname != self.server.hostname:
            log.warning("fabric-manager restart of %s arrived on %s's stream; ignored", event.hostname,
                        self.server.hostname)
        else:
            fabric_manager_replay(server=self.server, actor=self.actor)


def watch_fleet_health(
    stop_event: threading.Event,
    *,
    servers: Iterable[Server] | None = None,
    rescan_s: float = RESCAN_S,
    actor: Actor = ACTOR,
    backoff_s: float = BACKOFF_S,
    watchers: dict[int, ServerHealthWatch] | None = None,
) -> None:
    """Watch every server's health until `stop_event` is set; stops every thread before returning.

    `servers`: None for every server with an agent endpoint (re-read every `rescan_s`); a queryset
    is re-evaluated on each scan; a list is watched as given. `watchers` (optional) is filled with
    the live watchers by server id, for tests and diagnostics.
    """
    watchers = {} if watchers is None else watchers
    try:
        while not stop_event.is_set():
            try:
                _rescan(watchers, _targets(servers), actor=actor, backoff_s=backoff_s)
            except Exception:  # the database being away must not end the process; try again later
                log.exception("health watch: could not scan the servers")
            finally:
                close_old_connections()
            stop_event.wait(rescan_s)
    finally:
        for watch in watchers.values():
            watch.stop()
        for watch in watchers.values():
            watch.join()
        watchers.clear()
        connection.close()


def _targets(servers: Iterable[Server] | None) -> list[Server]:
    if servers is None:
        servers = Server.objects.exclude(agent_endpoint="")
    elif hasattr(servers, "all"):
        servers = servers.all()  # a queryset: fresh rows on every scan
    return [s for s in servers if s.agent_endpoint]


def _rescan(watchers: dict[int, ServerHealthWatch], servers: list[Server], *, actor: Actor,
            backoff_s: float) -> None:
    wanted = {s.pk: s for s in servers}
    for pk in list(watchers):
        watch = watchers[pk]
        server = wanted.get(pk)
        if server is None or server.agent_endpoint != watch.endpoint or not watch.alive:
            watch.stop()
            watch.join()
            del watchers[pk]
            log.info("health watch: stopped watching %s", watch.server.hostname)
    for pk, server in wanted.items():
        if pk not in watchers:
            watchers[pk] = ServerHealthWatch(server, actor=actor, backoff_s=backoff_s).start()
            log.info("health watch: watching %s at %s", server.hostname, server.agent_endpoint)
