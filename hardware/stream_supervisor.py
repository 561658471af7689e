"""Keep a desired set of keyed async streams running, on one event loop, and hand their items on.

Level-based, as the reconcilers are: the owner says which streams should exist
(`await supervisor.set_desired({key: factory})`, as often as it likes) and the supervisor makes
it so: it starts the new keys, cancels the ones no longer named (closing their streams), and
re-opens a stream that failed or ended, after an exponential backoff (`backoff_s`, doubling up to
`backoff_max_s`, with jitter; back to `backoff_s` once a stream has lived `healthy_after_s`).

    supervisor = StreamSupervisor(record)          # record(key, item): sync or async
    await supervisor.set_desired({
        ("health", server.hostname, server.agent_endpoint):
            partial(streams.watch_health, server.agent_endpoint, server.hostname),
    })
    ...
    await supervisor.stop()

A factory is a zero-argument callable returning an async iterator (`AsyncAgentStreams.watch_*`
returns one). A key that stays in the desired set keeps its running stream, and its new factory
is used from the next re-open: put in the key whatever must force a new stream when it changes
(the agent's endpoint). A stream with an async `ready()` (AioAgentStream) counts as connected
once that returns, i.e. once the agent has subscribed.

Items of one key reach the callback in order, one at a time; keys run concurrently. Each key has a
reader task (stream → bounded queue) and a handler task (queue → callback), so a slow callback
does not stop the stream being read until `queue_size` items wait; then reading pauses (gRPC flow
control pushes back to the agent) rather than dropping anything. An exception in the callback is
logged and counted and the next item is handled; it never ends the stream.

For Django: the callback may be `asgiref.sync.sync_to_async(fn)` (an async callable), so database
work runs in asgiref's worker thread, never on the event loop. With the default
`thread_sensitive=True` every key's callbacks share that one thread: per-key order holds, and the
database sees one writer. Pass a sync callback only for work that never blocks (it runs on the
loop). A re-opened stream can repeat items (WatchBoot replays the phases already passed), so
record idempotently.

`restart_on_end=False` suits streams that finish (WatchBoot ends after the final phase): an
ended stream stays finished (`stats[key].finished`) until its key is removed; a failed one is
still re-opened. Counters per key are in `supervisor.stats` (for tests and diagnostics).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
StreamFactory = Callable[[], AsyncIterator[Any]]
Callback = Callable[[Any, Any], Awaitable[None] | None]

BACKOFF_S = 0.5  # first wait before re-opening a stream that failed or ended
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 30.0  # a stream that lived this long starts the backoff over
JITTER = 0.2  # ± this fraction of each wait, so streams cut together do not reconnect together
QUEUE_SIZE = 1_000  # items read but not yet handled, per key


@dataclass
class StreamStats:
    """Counters of one key's stream since the key was added."""

    connects: int = 0  # streams opened (and acknowledged by the agent, for a stream with ready())
    failures: int = 0  # streams that raised, before or after connecting
    ends: int = 0  # streams that ended without an error
    events: int = 0  # items read from the stream
    handled: int = 0  # items the callback returned from without an error
    callback_errors: int = 0  # items whose callback raised
    connected: bool = False  # a stream is open now
    finished: bool = False  # ended and not to be re-opened (restart_on_end=False)
    last_error: str = ""
    next_retry_s: float = 0.0  # the wait before the current re-open, if waiting

    @property
    def pending(self) -> int:
        """Items read but not handled yet (still queued, or in the callback)."""
        return self.events - self.handled - self.callback_errors


@dataclass
class _Watch:
    key: Any
    factory: StreamFactory
    queue: asyncio.Queue
    stats: StreamStats = field(default_factory=StreamStats)
    tasks: tuple[asyncio.Task, ...] = ()


class StreamSupervisor(Generic[K, T]):
    """Runs one stream per desired key on the running loop; see the module docstring."""

    def __init__(
        self,
        callback: Callable[[K, T], Awaitable[None] | None],
        *,
        backoff_s: float = BACKOFF_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
        jitter: float = JITTER,
        queue_size: int = QUEUE_SIZE,
        restart_on_end: bool = True,
        name: str = "stream",
        rng: random.Random | None = None,
    ) -> None:
        self._callback = callback
        self.backoff_s, self.backoff_max_s, self.healthy_after_s = backoff_s, backoff_max_s, healthy_after_s
        self.jitter, self.queue_size, self.restart_on_end, self.name = jitter, queue_size, restart_on_end, name
        self._rng = rng or random.Random()
        self._watches: dict[K, _Watch] = {}
        self._stopped = False

    # -- the owner's interface -------------------------------------------------------------
    @property
    def keys(self) -> list[K]:
        return list(self._watches)

    @property
    def stats(self) -> dict[K, StreamStats]:
        """Counters by key, for the keys now desired."""
        return {key: w.stats for key, w in self._watches.items()}

    @property
    def connected(self) -> int:
        """How many streams are open now."""
        return sum(w.stats.connected for w in self._watches.values())

    async def set_desired(self, desired: Mapping[K, StreamFactory]) -> None:
        """Make the running streams those of `desired`; returns once removed streams are closed."""
        if self._stopped:
            raise RuntimeError(f"{self.name} supervisor is stopped")
        removed = [self._watches.pop(key) for key in list(self._watches) if key not in desired]
        for key, factory in desired.items():
            watch = self._watches.get(key)
            if watch is None:
                self._watches[key] = self._start(key, factory)
            else:
                watch.factory = factory
        await self._cancel(removed)

    async def stop(self) -> None:
        """Cancel every stream and callback and wait for them; items not yet handled are dropped."""
        self._stopped = True
        watches, self._watches = list(self._watches.values()), {}
        await self._cancel(watches)

    async def __aenter__(self) -> StreamSupervisor[K, T]:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- per key -----------------------------------------------------------------------------
    def _start(self, key: K, factory: StreamFactory) -> _Watch:
        watch = _Watch(key, factory, asyncio.Queue(self.queue_size))
        label = f"{self.name}:{key}"
        watch.tasks = (
            asyncio.create_task(self._read(watch), name=f"{label}:read"),
            asyncio.create_task(self._handle(watch), name=f"{label}:handle"),
        )
        return watch

    async def _cancel(self, watches: list[_Watch]) -> None:
        tasks = [t for w in watches for t in w.tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for w in watches:
            w.stats.connected = False
            if w.stats.pending:
                log.info("%s %s: %d item(s) dropped unhandled", self.name, w.key, w.stats.pending)

    def _delay(self, attempt: int) -> float:
        base = min(self.backoff_s * 2**attempt, self.backoff_max_s)
        return base * (1 + self.jitter * (2 * self._rng.random() - 1)) if self.jitter else base

    async def _read(self, watch: _Watch) -> None:
        loop = asyncio.get_running_loop()
        stats = watch.stats
        attempt = 0
        while True:
            opened = loop.time()
            stream = None
            try:
                stream = watch.factory()
                ready = getattr(stream, "ready", None)
                if ready is not None:
                    await ready()
                stats.connects += 1
                stats.connected = True
                async for item in stream:
                    stats.events += 1
                    await watch.queue.put(item)
                stats.ends += 1
                if not self.restart_on_end:
                    stats.finished = True
                    log.debug("%s %s: stream finished", self.name, watch.key)
                    return
                log.info("%s %s: stream ended", self.name, watch.key)
            except Exception as exc:  # any failure re-opens the stream; cancellation passes through
                stats.failures += 1
                stats.last_error = f"{type(exc).__name__}: {exc}"
                # The first failure after a healthy stream is news; its retries are not (1,000 of them
                # when an agent endpoint serving 1,000 nodes goes away).
                level = logging.WARNING if attempt == 0 else logging.INFO
                log.log(level, "%s %s: stream failed: %s", self.name, watch.key, stats.last_error)
            finally:
                stats.connected = False
                if stream is not None:
                    await _close(stream)
            if loop.time() - opened >= self.healthy_after_s:
                attempt = 0
            stats.next_retry_s = self._delay(attempt)
            attempt += 1
            await asyncio.sleep(stats.next_retry_s)
            stats.next_retry_s = 0.0

    async def _handle(self, watch: _Watch) -> None:
        stats = watch.stats
        while True:
            item = await watch.queue.get()
            try:
                result = self._callback(watch.key, item)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one bad item must not end the stream
                stats.callback_errors += 1
                log.exception("%s %s: callback failed on %r", self.name, watch.key, item)
            else:
                stats.handled += 1


async def _close(stream: Any) -> None:
    """Close the stream (cancels its call); a closing error is not the caller's problem."""
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    with contextlib.suppress(Exception):
        await aclose()
