"""Serve one simulated host (NodeAgent + SimAdmin) on its own port."""

from __future__ import annotations

from hardware.agent.routing import SingleHost
from hardware.agent.server import AgentServer, serve
from hardware.tls import TlsIdentity
from simulator.admin import add_sim_admin
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
