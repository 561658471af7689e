"""The node watcher: every agent's health stream, and the boot stream of every VM a holder waits on,
in one asyncio process (`manage.py nodewatch`, the Procfile's `nodewatch`).

Streams are grpc.aio calls on one channel per agent endpoint (`hardware.agent_aio`), kept running by
`hardware.stream_supervisor` (re-opened with backoff when they drop; bench/simfleet.py holds 1,200
of them on one simulated port without slowing other calls). Each `rescan_s` the watcher reads what
should be followed (level-based, like the reconcilers):

- health: every server with an agent endpoint; events go to `fleet.health.gpu_record_health`, and
  a fabric-manager restart to `fleet.fabric_replay.fabric_manager_replay` at once (its 60 s window);
- boots: the allocations whose holder waits on its VM's boot (`fleet.holders.booting_allocations`);
  each event goes to the holder (`fleet.holders.record_boot_event`), and the stream is done once the
  holder says the boot is over. A re-opened boot stream replays its phases: holders record them
  idempotently.

Database work runs through `sync_to_async` on one worker thread (events of one stream in order; one
writer), never on the event loop; Celery tasks never hold a stream open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from functools import partial

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from console.audit import Actor
from console.models import Source
from console.tasks_base import DATABASE_TRANSIENT
from fleet import holders
from fleet.agents import tls_identity
from fleet.fabric_replay import fabric_manager_replay
from fleet.health import gpu_record_health
from fleet.models import Allocation, Server
from hardware import kube_constants
from hardware.agent_aio import AsyncAgentStreams
from hardware.stream_supervisor import StreamSupervisor
from hardware.types import BootPhaseEvent, HealthEvent, HealthKind

log = logging.getLogger(__name__)
ACTOR = Actor.system("node-watch", source=Source.AGENT)
RESCAN_S = 1.0  # how soon a new server or a new boot is followed
BACKOFF_S = 0.5
DB_RETRIES = 5  # a locked or restarting database
STOP_POLL_S = 0.1


@dataclass(frozen=True)
class HealthKey:
    server_id: int
    hostname: str
    endpoint: str  # a new endpoint is a new stream


@dataclass(frozen=True)
class BootKey:
    allocation_id: int
    holder: str
    vm_id: str
    hostname: str
    endpoint: str


class NodeWatch:
    """Follows the fleet's health and boot streams until `run`'s stop event is set."""

    def __init__(self, *, actor: Actor = ACTOR, rescan_s: float = RESCAN_S, backoff_s: float = BACKOFF_S) -> None:
        self.actor, self.rescan_s, self.backoff_s = actor, rescan_s, backoff_s
        self.health: StreamSupervisor | None = None
        self.boots: StreamSupervisor | None = None
        self._servers: dict[int, Server] = {}
        self._boots_over: set[BootKey] = set()

    async def run(self, stop: asyncio.Event) -> None:
        streams = await self._streams(stop)
        if streams is None:
            return
        self.health = StreamSupervisor(sync_to_async(self._record_health), backoff_s=self.backoff_s, name="health")
        self.boots = StreamSupervisor(sync_to_async(self._record_boot), backoff_s=self.backoff_s,
                                      restart_on_end=False, name="boot")
        try:
            while not stop.is_set():
                try:
                    health, boots = await sync_to_async(self._desired)()
                    await self.health.set_desired({
                        key: partial(streams.watch_health, key.endpoint, key.hostname) for key in health})
                    await self.boots.set_desired({
                        key: partial(streams.watch_boot, key.endpoint, key.hostname, key.vm_id) for key in boots})
                except Exception:  # the database being away must not end the process; try again later
                    log.exception("node watch: could not read what to follow")
                await _wait(stop, self.rescan_s)
        finally:
            await self.health.stop()
            await self.boots.stop()
            await streams.close()

    async def _streams(self, stop: asyncio.Event) -> AsyncAgentStreams | None:
        """The agents' client, once the console's TLS material exists (`make run` starts the fleet,
        which makes the development CA, beside this process); None if stopped first."""
        while not stop.is_set():
            try:
                identity = tls_identity()
            except FileNotFoundError as exc:
                log.warning("node watch: waiting for the agents' TLS material (%s)", exc)
                await _wait(stop, self.rescan_s)
                continue
            return AsyncAgentStreams(credentials=identity, insecure=identity is None)
        return None

    # -- in the database thread ------------------------------------------------------------
    def _desired(self) -> tuple[list[HealthKey], list[BootKey]]:
        close_old_connections()
        servers = {s.pk: s for s in Server.objects.exclude(agent_endpoint="")}
        self._servers = servers
        health = [HealthKey(s.pk, s.hostname, s.agent_endpoint) for s in servers.values()]
        waited_on = []
        for allocation in Allocation.objects.filter(pk__in=holders.booting_allocations()).select_related("server"):
            if not allocation.server.agent_endpoint or not allocation.consumer_name:
                continue
            vm_id = kube_constants.vm_id_for_pod(allocation.consumer_namespace, allocation.consumer_name)
            waited_on.append(BootKey(allocation.pk, allocation.holder, vm_id, allocation.server.hostname,
                                     allocation.server.agent_endpoint))
        self._boots_over &= set(waited_on)  # a boot nobody waits on any more is forgotten
        return health, [key for key in waited_on if key not in self._boots_over]

    def _record_health(self, key: HealthKey, event: HealthEvent) -> None:
        server = self._servers.get(key.server_id)
        if server is None:
            return
        if event.kind is not HealthKind.FABRIC_MANAGER_RESTARTED:
            self._retrying(lambda: gpu_record_health(server=server, event=event, actor=self.actor), key)
        elif event.hostname and event.hostname != server.hostname:
            log.warning("fabric-manager restart of %s arrived on %s's stream; ignored", event.hostname,
                        server.hostname)
        else:
            self._retrying(lambda: fabric_manager_replay(server=server, actor=self.actor), key)

    def _record_boot(self, key: BootKey, event: BootPhaseEvent) -> None:
        over = self._retrying(
            lambda: holders.record_boot_event(allocation_id=key.allocation_id, holder=key.holder, event=event), key)
        if over:
            self._boots_over.add(key)

    def _retrying(self, record, key):
        """Run one recording; a transient database error is retried (recordings are idempotent)."""
        for attempt in range(DB_RETRIES + 1):
            close_old_connections()  # a long-lived thread: drop a connection the database closed
            try:
                return record()
            except DATABASE_TRANSIENT as exc:
                if attempt == DB_RETRIES:
                    log.error("%s: could not record an event: %s", key, exc)
                    raise
                time.sleep(self.backoff_s * 2**attempt)
        return None


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def run_node_watch(stop: threading.Event, *, watch: NodeWatch | None = None, **options) -> NodeWatch:
    """Run a NodeWatch on a fresh event loop in this thread until `stop` (set from any thread or a
    signal handler) is set: the management command and tests."""
    watch = watch or NodeWatch(**options)

    async def main() -> None:
        stopped = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                await asyncio.sleep(STOP_POLL_S)
            stopped.set()

        poller = asyncio.create_task(poll())
        try:
            await watch.run(stopped)
        finally:
            poller.cancel()

    asyncio.run(main())
    return watch
