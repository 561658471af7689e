"""Which host backend serves a call: one per agent on a real server, many in a simulated fleet.

A multiplexing server routes by the metadata key `x-gpuconsole-node` (AgentClient sends it when
given `node=`). A WatchHealth call without the key on a multiplexed server streams every host's
events (each event names its host).

The resolver also owns each host's GPU lease book (`lease_book`): the leases the console set with
SetGpuLeases, which the node's device plugin reads. It lives in the agent, not in the backend, so
LinuxHost and SimHost need nothing for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from hardware.backend import HostBackend
from hardware.deviceplugin.leases import InMemoryLeaseBook
from hardware.exceptions import InvalidArgument, NotFound
from hardware.types import HealthEvent

NODE_METADATA_KEY = "x-gpuconsole-node"


class HostResolver(Protocol):
    def host(self, node: str | None) -> HostBackend: ...

    def watch_all(self) -> Iterator[HealthEvent]: ...

    def lease_book(self, node: str | None) -> InMemoryLeaseBook: ...


class SingleHost:
    """The usual agent: one backend. A node key, when sent, must name this host."""

    def __init__(self, backend: HostBackend, hostname: str, lease_book: InMemoryLeaseBook | None = None) -> None:
        self.backend = backend
        self.hostname = hostname
        self.leases = lease_book if lease_book is not None else InMemoryLeaseBook()

    def lease_book(self, node: str | None) -> InMemoryLeaseBook:
        self.host(node)
        return self.leases

    def host(self, node: str | None) -> HostBackend:
        if node and node != self.hostname:
            raise NotFound(f"this agent serves {self.hostname}, not {node}")
        return self.backend

    def watch_all(self) -> Iterator[HealthEvent]:
        return self.backend.watch_health()


class HostTable:
    """Many backends behind one port, keyed by hostname."""

    def __init__(self, hosts: Mapping[str, HostBackend], watch_all: Callable[[], Iterator[HealthEvent]]):
        self.hosts = hosts
        self._watch_all = watch_all
        self._books: dict[str, InMemoryLeaseBook] = {}
        self._books_lock = threading.Lock()

    def host(self, node: str | None) -> HostBackend:
        if not node:
            raise InvalidArgument(f"this agent serves {len(self.hosts)} hosts: send {NODE_METADATA_KEY}")
        try:
            return self.hosts[node]
        except KeyError:
            raise NotFound(f"no host {node!r} behind this agent") from None

    def watch_all(self) -> Iterator[HealthEvent]:
        return self._watch_all()

    def lease_book(self, node: str | None) -> InMemoryLeaseBook:
        self.host(node)
        with self._books_lock:
            return self._books.setdefault(node, InMemoryLeaseBook())


def node_of(context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == NODE_METADATA_KEY:
            return value
    return None
