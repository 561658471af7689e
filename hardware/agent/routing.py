"""Which host backend serves a call: one per agent on a real server, many in a simulated fleet.

A multiplexing server routes by the metadata key `x-gpuconsole-node` (AgentClient sends it when
given `node=`). A WatchHealth call without the key on a multiplexed server streams every host's
events (each event names its host).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from hardware.backend import HostBackend
from hardware.exceptions import InvalidArgument, NotFound
from hardware.types import HealthEvent

NODE_METADATA_KEY = "x-gpuconsole-node"


class HostResolver(Protocol):
    def host(self, node: str | None) -> HostBackend: ...

    def watch_all(self) -> Iterator[HealthEvent]: ...


class SingleHost:
    """The usual agent: one backend. A node key, when sent, must name this host."""

    def __init__(self, backend: HostBackend, hostname: str) -> None:
        self.backend = backend
        self.hostname = hostname

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

    def host(self, node: str | None) -> HostBackend:
        if not node:
            raise InvalidArgument(f"this agent serves {len(self.hosts)} hosts: send {NODE_METADATA_KEY}")
        try:
            return self.hosts[node]
        except KeyError:
            raise NotFound(f"no host {node!r} behind this agent") from None

    def watch_all(self) -> Iterator[HealthEvent]:
        return self._watch_all()


def node_of(context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == NODE_METADATA_KEY:
            return value
    return None
