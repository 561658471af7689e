"""SimFleet: many simulated servers served over the node-agent protocol on loopback.

Up to `per_port_limit` servers each get their own agent server and port (like real nodes); beyond
that all of them are served through one multiplexed port, routed by `x-gpuconsole-node`. Every
agent also serves SimAdmin. All hosts share one clock and one event hub, so a fleet-wide health
watch (WatchHealth without a node key on the multiplexed port) is one subscription.

    python -m simulator.fleet --servers 100 --insecure          # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from hardware.agent.routing import HostTable
from hardware.agent.server import AgentServer, serve
from hardware.platforms import get_platform
from hardware.tls import TlsIdentity
from simulator.admin import add_sim_admin
from simulator.agent import AgentSwitch, serve_sim_host
from simulator.clock import SimClock
from simulator.events import EventHub
from simulator.faults import FaultProcess
from simulator.host import SimHost
from simulator.host_features import fleet_mix
from simulator.telemetry import DEFAULT_INTERVAL_S, TelemetryProcess

DEFAULT_PER_PORT_LIMIT = 16
# The agent's gRPC server is synchronous: every open stream (WatchHealth, WatchBoot, ScrubGpu)
# holds one of its worker threads until it ends, and a call that finds every worker busy waits in
# the server's queue. With a fixed pool of 64 a console following 1,000 multiplexed hosts got 64
# streams and every other call (GetInventory, ...) timed out. So the multiplexed port's pool is
# sized from the fleet: STREAM_SLOTS_PER_HOST workers per host for streams (a health watch and a
# boot watch) plus UNARY_WORKERS that streams alone cannot take up.
UNARY_WORKERS = 64
STREAM_SLOTS_PER_HOST = 2


@dataclass(frozen=True)
class Endpoint:
    """How to reach one simulated server: `AgentClient(address, node=node, ...)`."""

    hostname: str
    address: str
    node: str | None  # None: the port serves only this host


class SimFleet:
    def __init__(
        self,
        servers: int,
        *,
        platform: str = "hgx-h100-8",
        variant: str | None = None,
        seed: int = 0,
        accel: float = 60.0,
        name_prefix: str = "sim",
        tls: TlsIdentity | None = None,
        insecure: bool = False,
        per_port_limit: int = DEFAULT_PER_PORT_LIMIT,
        listen_host: str = "127.0.0.1",
        port_base: int = 0,
        fault_rate_per_gpu_hour: float = 0.0,
        telemetry_interval_s: float = 0.0,
        stream_slots_per_host: int = STREAM_SLOTS_PER_HOST,
        feature_mix: bool = False,
        **host_options,
    ) -> None:
        """`feature_mix`: give the servers a realistic mix of host kernels and boot features
        (`simulator.host_features.fleet_mix`, deterministic from `seed`) instead of the same
        features (`host_options`) for all. `telemetry_interval_s` > 0: report GPU temperatures that
        moved on the health streams that often (`simulator.telemetry`; off by default, so a test's
        streams carry only what it caused)."""
        if servers < 1:
            raise ValueError("a fleet needs at least one server")
        if tls is None and not insecure:
            raise ValueError("pass tls=TlsIdentity(...) or insecure=True")
        get_platform(platform)  # fail early on an unknown platform
        self.clock = SimClock(accel)
        self.hub = EventHub()
        self.hosts: dict[str, SimHost] = {}
        mix = fleet_mix(servers, seed) if feature_mix else [None] * servers
        for i, features in enumerate(mix, start=1):
            name = f"{name_prefix}-{i:04d}"
            self.hosts[name] = SimHost(
                name, platform, variant, clock=self.clock, hub=self.hub, seed=seed, features=features, **host_options
            )
        self.tls, self.insecure = tls, insecure
        self.per_port_limit, self.listen_host, self.port_base = per_port_limit, listen_host, port_base
        self.multiplexed = servers > per_port_limit
        self.stream_slots_per_host = stream_slots_per_host
        self.servers: list[AgentServer] = []
        self.endpoints: dict[str, Endpoint] = {}
        self.faults = (
            FaultProcess(list(self.hosts.values()), seed=seed, rate_per_gpu_hour=fault_rate_per_gpu_hour)
            if fault_rate_per_gpu_hour > 0
            else None
        )
        self.telemetry = (
            TelemetryProcess(list(self.hosts.values()), seed=seed, interval_s=telemetry_interval_s)
            if telemetry_interval_s > 0
            else None
        )

    @property
    def multiplexed_workers(self) -> int:
        """Worker threads of the multiplexed port: stream slots for every host plus unary headroom."""
        return UNARY_WORKERS + self.stream_slots_per_host * len(self.hosts)

    def _listen(self, offset: int) -> str:
        return f"{self.listen_host}:{self.port_base + offset if self.port_base else 0}"

    def start(self) -> SimFleet:
        try:
            if self.multiplexed:
                table = HostTable(self.hosts, lambda: self.hub.subscribe(None))
                server = serve(
                    AgentSwitch(table),
                    self._listen(0),
                    tls=self.tls,
                    insecure=self.insecure,
                    workers=self.multiplexed_workers,
                    extra_servicers=(add_sim_admin(table, self.clock),),
                )
                server.resolver = table
                self.servers.append(server)
                for name in self.hosts:
                    self.endpoints[name] = Endpoint(name, server.address, name)
            else:
                for i, (name, host) in enumerate(self.hosts.items()):
                    server = serve_sim_host(host, self._listen(i), tls=self.tls, insecure=self.insecure, workers=8)
                    self.servers.append(server)
                    self.endpoints[name] = Endpoint(name, server.address, None)
        except Exception:
            self.stop()
            raise
        if self.faults:
            self.faults.start()
        if self.telemetry:
            self.telemetry.start()
        return self

    def stop(self) -> None:
        if self.telemetry:
            self.telemetry.stop()
        if self.faults:
            self.faults.stop()
        for server in self.servers:
            server.stop(grace=0.2)
        self.servers.clear()

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulator.fleet", description="serve a simulated fleet")
    p.add_argument("--servers", type=int, default=4)
    p.add_argument("--platform", default="hgx-h100-8")
    p.add_argument("--variant", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accel", type=float, default=60.0)
    p.add_argument("--port-base", type=int, default=0)
    p.add_argument("--per-port-limit", type=int, default=DEFAULT_PER_PORT_LIMIT)
    p.add_argument("--fault-rate", type=float, default=0.0, help="random faults per GPU per simulated hour")
    p.add_argument("--telemetry-interval", type=float, default=DEFAULT_INTERVAL_S,
                   help="real seconds between GPU temperature samples on the health streams (0: none)")
    p.add_argument("--feature-mix", action="store_true", help="a realistic mix of host kernels and boot features")
    p.add_argument(
        "--stream-slots-per-host",
        type=int,
        default=STREAM_SLOTS_PER_HOST,
        help="open streams per host the multiplexed port holds besides its unary workers",
    )
    p.add_argument("--tls-dir", type=Path, help="folder with ca.pem and a server certificate")
    p.add_argument("--tls-name", default="simfleet")
    p.add_argument("--insecure", action="store_true")
    args = p.parse_args(argv)
    tls = TlsIdentity.from_dir(args.tls_dir, args.tls_name) if args.tls_dir else None
    fleet = SimFleet(
        args.servers,
        platform=args.platform,
        variant=args.variant,
        seed=args.seed,
        accel=args.accel,
        tls=tls,
        insecure=args.insecure,
        per_port_limit=args.per_port_limit,
        port_base=args.port_base,
        fault_rate_per_gpu_hour=args.fault_rate,
        telemetry_interval_s=max(args.telemetry_interval, 0.0),
        stream_slots_per_host=args.stream_slots_per_host,
        feature_mix=args.feature_mix,
    ).start()
    for ep in fleet.endpoints.values():
        print(f"{ep.hostname} {ep.address} {ep.node or '-'}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
