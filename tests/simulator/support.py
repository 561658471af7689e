"""Helpers shared by the agent and simulator tests: a throwaway PKI and a served SimHost."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hardware.agent_client import AgentClient
from hardware.tls import TlsIdentity, issue_cert, make_dev_ca
from simulator.agent import serve_sim_host
from simulator.clock import SimClock
from simulator.host import SimHost

FAST = 20_000.0  # simulated seconds per real second: a 30-minute boot plays in ~0.1 s


@dataclass(frozen=True)
class Pki:
    node: TlsIdentity
    console: TlsIdentity
    foreign_console: TlsIdentity  # same name, another CA


def make_pki(base: Path) -> Pki:
    make_dev_ca(base / "ca")
    issue_cert(base / "ca", "node")
    issue_cert(base / "ca", "console")
    make_dev_ca(base / "other-ca")
    issue_cert(base / "other-ca", "console")
    return Pki(
        node=TlsIdentity.from_dir(base / "ca", "node"),
        console=TlsIdentity.from_dir(base / "ca", "console"),
        foreign_console=TlsIdentity.from_dir(base / "other-ca", "console"),
    )


@contextlib.contextmanager
def served_host(
    pki: Pki, *, accel: float = FAST, platform: str = "hgx-h100-8", variant: str | None = None, **host_options
) -> Iterator[tuple[SimHost, AgentClient]]:
    """A SimHost behind a real mTLS gRPC server on a loopback port 0, and a client for it."""
    host = SimHost("node-a", platform, variant, clock=SimClock(accel), **host_options)
    server = serve_sim_host(host, tls=pki.node)
    client = AgentClient(server.address, credentials=pki.console, timeout=5, retries=1, backoff=0.01)
    try:
        yield host, client
    finally:
        client.close()
        server.stop(grace=0)
