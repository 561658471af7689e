"""Build and run the agent's gRPC server (mTLS unless explicitly insecure)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures

import grpc

from hardware.agent.routing import HostResolver
from hardware.agent.servicer import NodeAgentServicer
from hardware.proto.gen.gpuconsole.agent.v1 import agent_pb2_grpc
from hardware.tls import TlsIdentity

DEFAULT_WORKERS = 32
# Streams (health, boot) hold a worker each; keep-alives let dead consoles be noticed.
SERVER_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


class AgentServer:
    """A started gRPC server; `port` is the bound port (useful with port 0)."""

    def __init__(self, server: grpc.Server, port: int, host: str, resolver: HostResolver | None = None) -> None:
        self.server, self.port, self.host = server, port, host
        self.resolver = resolver  # the hosts it serves (and their lease books)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 0.5) -> None:
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(
    resolver: HostResolver,
    listen: str = "127.0.0.1:0",
    *,
    tls: TlsIdentity | None = None,
    insecure: bool = False,
    workers: int = DEFAULT_WORKERS,
    extra_servicers: tuple[Callable[[grpc.Server], None], ...] = (),
) -> AgentServer:
    """Start a NodeAgent server on `listen`; `extra_servicers` add services (the simulator's SimAdmin)."""
    if tls is None and not insecure:
        raise ValueError("the agent needs TLS credentials; pass insecure=True for plaintext")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=SERVER_OPTIONS)
    agent_pb2_grpc.add_NodeAgentServicer_to_server(NodeAgentServicer(resolver), server)
    for add in extra_servicers:
        add(server)
    if tls is not None:
        port = server.add_secure_port(listen, tls.server_credentials())
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    server.start()
    return AgentServer(server, port, listen.rsplit(":", 1)[0], resolver)
