"""Run the device plugin on its own, beside a node agent: `python -m hardware.deviceplugin --agent ADDR ...`.

The usual deployment runs the plugin inside the agent (`python -m hardware.agent --device-plugin`).
This standalone form reads everything from an agent over gRPC instead: the GPUs from its inventory
(re-read every `--health-poll` seconds and on each of its health events), and the leases from
ListGpuLeases at every Allocate (fresh, so a lease that went Scrubbing a moment ago is refused; if
the agent cannot be reached, every GPU is refused: fail closed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from hardware import cdi
from hardware.agent_client import AgentClient
from hardware.deviceplugin.leases import LeaseGrant, grant_for
from hardware.deviceplugin.node import NodeDevicePlugin
from hardware.deviceplugin.server import DEFAULT_ENDPOINT, DEFAULT_PLUGIN_DIR, KUBELET_POLL_S
from hardware.deviceplugin.servicer import AllocateMode
from hardware.exceptions import HardwareError
from hardware.shutdown import stop_on_signals, wait_for
from hardware.tls import TlsIdentity
from hardware.types import HealthEvent, Inventory

log = logging.getLogger(__name__)


class AgentLeaseBook:
    """A LeaseBook that asks the agent (ListGpuLeases) every time; no grants when it cannot."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client

    def grants(self) -> Sequence[LeaseGrant]:
        try:
            return tuple(grant_for(b) for b in self._client.list_gpu_leases())
        except HardwareError as exc:
            log.warning("cannot read the agent's leases (refusing every GPU): %s", exc)
            return ()


class AgentHost:
    """An agent client as the plugin's inventory source."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client

    def inventory(self) -> Inventory:
        return self._client.get_inventory()

    def watch_health(self) -> Iterator[HealthEvent]:
        return self._client.watch_health()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hardware.deviceplugin", description=__doc__.splitlines()[0])
    p.add_argument("--agent", required=True, help="the node agent's address, e.g. 127.0.0.1:50051")
    p.add_argument("--tls-dir", type=Path, help="folder with ca.pem, NAME.pem, NAME-key.pem")
    p.add_argument("--tls-name", default="console", help="certificate name in --tls-dir")
    p.add_argument("--server-name", help="the agent certificate's name, if not the address")
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    p.add_argument("--node", help="x-gpuconsole-node for a multiplexing (simulated) agent")
    p.add_argument("--kubelet-dir", type=Path, default=DEFAULT_PLUGIN_DIR)
    p.add_argument("--cdi-dir", type=Path, default=cdi.DEFAULT_DIRECTORY)
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="the plugin socket's name in --kubelet-dir")
    p.add_argument("--allocate-mode", choices=[m.value for m in AllocateMode], default=AllocateMode.CDI.value)
    p.add_argument("--health-poll", type=float, default=5.0)
    p.add_argument("--kubelet-poll", type=float, default=KUBELET_POLL_S)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.insecure == bool(args.tls_dir):
        print("give exactly one of --tls-dir or --insecure", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    credentials = TlsIdentity.from_dir(args.tls_dir, args.tls_name) if args.tls_dir else None
    client = AgentClient(args.agent, credentials=credentials, insecure=args.insecure, node=args.node,
                         server_name=args.server_name)
    try:
        plugin = NodeDevicePlugin(
            AgentHost(client), AgentLeaseBook(client), kubelet_dir=args.kubelet_dir, cdi_dir=args.cdi_dir,
            endpoint=args.endpoint, mode=AllocateMode(args.allocate_mode), health_poll=args.health_poll,
            kubelet_poll=args.kubelet_poll,
        )
        plugin.start()
    except (HardwareError, OSError) as exc:
        print(f"device plugin: {exc}", file=sys.stderr)
        client.close()
        return 1
    stop = stop_on_signals()
    print(f"device plugin on {plugin.server.socket_path}, CDI spec {plugin.cdi_path}", flush=True)
    wait_for(stop)
    plugin.stop()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
