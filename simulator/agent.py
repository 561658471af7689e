"""Serve one simulated host (NodeAgent + SimAdmin) on its own port."""

from __future__ import annotations

from hardware.agent.routing import SingleHost
from hardware.agent.server import AgentServer, serve
from hardware.tls import TlsIdentity
from simulator.admin import add_sim_admin
from simulator.clock import SimClock
from simulator.host import SimHost


def serve_sim_host(
    host: SimHost,
    listen: str = "127.0.0.1:0",
    *,
    tls: TlsIdentity | None = None,
    insecure: bool = False,
    workers: int = 16,
) -> AgentServer:
    resolver = SingleHost(host, host.hostname)
    return serve(
        resolver,
        listen,
        tls=tls,
        insecure=insecure,
        workers=workers,
        extra_servicers=(add_sim_admin(resolver, host.clock),),
    )


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
