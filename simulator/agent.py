"""Serve one simulated host (NodeAgent + SimAdmin) on its own port; `AgentSwitch` lets SimAdmin take
a host's node agent down and up while SimAdmin itself keeps answering."""

from __future__ import annotations

from collections.abc import Iterator

from hardware.agent.routing import HostResolver, SingleHost
from hardware.agent.server import AgentServer, serve
from hardware.backend import HostBackend
from hardware.deviceplugin.leases import InMemoryLeaseBook
from hardware.exceptions import AgentUnavailable
from hardware.tls import TlsIdentity
from hardware.types import HealthEvent
from simulator.admin import add_sim_admin
from simulator.clock import SimClock
from simulator.host import SimHost


class AgentSwitch:
    """The NodeAgent's view of a resolver: a host whose agent is down (`SimHost.agent_up`) answers
    UNAVAILABLE, as a stopped agent process would (connection refused). SimAdmin is served with the
    plain resolver: it is the simulator's own control plane, not part of the node."""

    def __init__(self, inner: HostResolver) -> None:
        self.inner = inner

    def host(self, node: str | None) -> HostBackend:
        backend = self.inner.host(node)
        if not getattr(backend, "agent_up", True):
            raise AgentUnavailable(f"the node agent on {getattr(backend, 'hostname', node)} is down (simulated)")
        return backend

    def watch_all(self) -> Iterator[HealthEvent]:
        return self.inner.watch_all()

    def lease_book(self, node: str | None) -> InMemoryLeaseBook:
        self.host(node)
        return self.inner.lease_book(node)


def serve_sim_host(
    host: SimHost,
    listen: str = "127.0.0.1:0",
    *,
    tls: TlsIdentity | None = None,
    insecure: bool = False,
    workers: int = 16,
) -> AgentServer:
    resolver = SingleHost(host, host.hostname)
    server = serve(
        AgentSwitch(resolver),
        listen,
        tls=tls,
        insecure=insecure,
        workers=workers,
        extra_servicers=(add_sim_admin(resolver, host.clock),),
    )
    server.resolver = resolver  # the host and its lease book, for the device plugin (not the switch)
    return server


def serve_from_args(args, *, tls: TlsIdentity | None) -> AgentServer:
    """`python -m hardware.agent --backend sim ...`: one SimHost from the command line's options."""
    host = SimHost(
        args.hostname,
        args.platform,
        args.variant,
        clock=SimClock(args.accel),
        seed=args.seed,
        host_kernel=args.host_kernel,
        plug_mode=args.plug_mode,
        iommu_backend=args.iommu_backend,
        hugepages=args.hugepages,
    )
    return serve_sim_host(host, args.listen, tls=tls, insecure=args.insecure)
