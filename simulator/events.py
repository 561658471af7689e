"""Health events from simulated hosts to subscribers (one hub per process, shared by a fleet).

A subscription is a bounded queue with an optional hostname filter; publishing never blocks (a
subscriber that falls behind loses its oldest events and is told so by a counter), so one slow
console cannot stall the simulated hardware.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator

from hardware.types import HealthEvent

# offer() and close() notify the waiting reader; the timeout is only a safety net. Each open stream
# waits in its own server thread, and at 1,000 of them a 0.2 s poll cost ~18% of a core idle.
_POLL_S = 5.0


class Subscription(Iterator[HealthEvent]):
    """Iterate to receive events; `close()` (from any thread) ends the iteration."""

    def __init__(self, hub: EventHub, hostname: str | None, maxlen: int) -> None:
        self._hub = hub
        self.hostname = hostname
        self._events: collections.deque[HealthEvent] = collections.deque(maxlen=maxlen)
        self._ready = threading.Condition()
        self._closed = False
        self.dropped = 0

    def offer(self, event: HealthEvent) -> None:
        with self._ready:
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append(event)
            self._ready.notify()

    def __next__(self) -> HealthEvent:
        with self._ready:
            while not self._events:
                if self._closed:
                    raise StopIteration
                self._ready.wait(_POLL_S)
            return self._events.popleft()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        self._hub.unsubscribe(self)


class EventHub:
    def __init__(self, maxlen: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []
        self._maxlen = maxlen

    def subscribe(self, hostname: str | None = None) -> Subscription:
        """Events of one host, or of every host when `hostname` is None."""
        sub = Subscription(self, hostname, self._maxlen)
        with self._lock:
            self._subscriptions = [*self._subscriptions, sub]
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s is not sub]

    def close_host(self, hostname: str) -> None:
        """End every subscription to one host's events (its agent went away)."""
        for sub in [s for s in self._subscriptions if s.hostname == hostname]:
            sub.close()

    def publish(self, event: HealthEvent) -> None:
        # Copy-on-write list: publishers iterate without holding the lock.
        for sub in self._subscriptions:
            if sub.hostname is None or sub.hostname == event.hostname:
                sub.offer(event)
