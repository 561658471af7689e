"""The one accessor for node agents: settings decide credentials; channels are reused per server."""

from __future__ import annotations

import threading
from functools import cache

from django.conf import settings

from fleet.models import Server
from hardware.agent_client import AgentClient
from hardware.tls import TlsIdentity

_clients: dict[tuple[str, str], AgentClient] = {}
_lock = threading.Lock()
CONSOLE_IDENTITY = "console"


@cache
def tls_identity() -> TlsIdentity | None:
    """The console's mTLS identity for agents (settings), or None when AGENT_INSECURE."""
    if settings.AGENT_INSECURE:
        return None
    return TlsIdentity.from_dir(settings.AGENT_TLS_DIR, CONSOLE_IDENTITY)


def agent_for(server: Server) -> AgentClient:
    """A client for `server`'s agent (mTLS unless AGENT_INSECURE). Multiplexed simulated agents
    route on the node name, so it is always sent."""
    key = (server.agent_endpoint, server.hostname)
    with _lock:
        client = _clients.get(key)
        if client is None:
            identity = tls_identity()
            client = AgentClient(
                server.agent_endpoint,
                credentials=identity,
                insecure=identity is None,
                node=server.hostname,
                timeout=settings.AGENT_TIMEOUT_S,
            )
            _clients[key] = client
        return client


def forget_agents() -> None:
    """Close every cached channel (tests; endpoint changes)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
    tls_identity.cache_clear()
