"""Simulated-fleet benchmark: memory of idle fleets, GetInventory latency, health-event throughput.

Run: `.venv/bin/python bench/simfleet.py [--quick]` (no Django). Each fleet runs in a child process
(so its memory is measured alone, and client and server do not share a GIL), served over mTLS
on one multiplexed loopback port. Prints readable figures, then as the last line one JSON object:

* `rss_mib_100`, `rss_mib_1000`: resident memory (VmRSS) of a child serving an idle fleet of 100 /
  1,000 simulated HGX H100 servers (target: 1,000 under 1,024 MiB).
* `inventory_p50_ms`, `inventory_p99_ms`: GetInventory round trips from one AgentClient, cycling
  through every server of the 1,000-server fleet.
* `health_events_per_s`: health events per second one fleet-wide WatchHealth subscriber receives
  while the seeded fault process fires as fast as it can across the 1,000-server fleet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardware.agent_client import AgentClient
from hardware.tls import TlsIdentity, issue_cert, make_dev_ca


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(servers: int, tls_dir: Path) -> int:
    """Serve a fleet; print one JSON line (address, hosts, rss); on 'faults' start the fault process."""
    from simulator.faults import FaultProcess
    from simulator.fleet import SimFleet

    fleet = SimFleet(servers, tls=TlsIdentity.from_dir(tls_dir, "node"), per_port_limit=16, accel=60.0).start()
    time.sleep(0.5)  # let the server threads settle before reading memory
    address = next(iter(fleet.endpoints.values())).address
    print(json.dumps({"address": address, "hosts": list(fleet.hosts), "rss_mib": _rss_mib()}), flush=True)
    faults = None
    gpus = sum(len(h.gpus) for h in fleet.hosts.values())
    for line in sys.stdin:
        command, _, value = line.strip().partition(" ")
        if faults:
            faults.stop()
            faults = None
        if command == "faults":
            # Faults per real second → faults per GPU per simulated hour on this clock.
            per_gpu_hour = float(value) * 3600 / (gpus * fleet.clock.acceleration)
            hosts = list(fleet.hosts.values())
            faults = FaultProcess(hosts, seed=1, rate_per_gpu_hour=per_gpu_hour).start()
        print("ok", flush=True)
    fleet.stop()
    return 0


class Child:
    def __init__(self, servers: int, tls_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(servers), "--tls-dir", str(tls_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def send(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def inventory_latency(address: str, hosts: list[str], console: TlsIdentity, calls: int) -> list[float]:
    clients = {}
    samples = []
    try:
        for i in range(calls):
            name = hosts[i % len(hosts)]
            client = clients.get(name)
            if client is None:
                # One channel for the whole fleet would be the console's choice; a client per node
                # key shares it (sim_admin-style), so only the node metadata differs.
                base = clients.get(None) or AgentClient(address, credentials=console, timeout=10)
                clients[None] = base
                client = AgentClient(address, node=name, timeout=10, channel=base._channel)
                clients[name] = client
            t = time.perf_counter()
            client.get_inventory()
            samples.append((time.perf_counter() - t) * 1000)
    finally:
        if None in clients:
            clients[None].close()
    return samples


def health_rate(address: str, console: TlsIdentity, child: Child, offered: float, seconds: float) -> float:
    """Events per second one subscriber receives while the fleet's faults fire at `offered` per second."""
    client = AgentClient(address, credentials=console, timeout=30)
    stream = client.watch_health(timeout=seconds + 30)
    count = 0
    stop = threading.Event()

    def consume() -> None:
        nonlocal count
        for _ in stream:
            count += 1
            if stop.is_set():
                return

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    child.send(f"faults {offered}")
    time.sleep(0.5)  # warm up
    start_count, t0 = count, time.perf_counter()
    time.sleep(seconds)
    received, elapsed = count - start_count, time.perf_counter() - t0
    child.send("stop")
    stop.set()
    stream.cancel()
    client.close()
    return received / elapsed


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--child", type=int)
    p.add_argument("--tls-dir", type=Path)
    p.add_argument("--quick", action="store_true", help="fewer calls and a shorter health window")
    args = p.parse_args()
    if args.child:
        return child(args.child, args.tls_dir)

    with tempfile.TemporaryDirectory() as tmp:
        tls_dir = Path(tmp)
        make_dev_ca(tls_dir)
        issue_cert(tls_dir, "node")
        issue_cert(tls_dir, "console")
        console = TlsIdentity.from_dir(tls_dir, "console")

        small = Child(100, tls_dir)
        rss_100 = small.info["rss_mib"]
        small.close()
        print(f"idle fleet of 100 servers:   {rss_100:7.1f} MiB RSS")

        big = Child(1000, tls_dir)
        rss_1000 = big.info["rss_mib"]
        print(f"idle fleet of 1,000 servers: {rss_1000:7.1f} MiB RSS (target < 1024)")
        try:
            calls = 500 if args.quick else 3000
            samples = inventory_latency(big.info["address"], big.info["hosts"], console, calls)
            p50, p99 = statistics.median(samples), pct(samples, 0.99)
            print(f"GetInventory over mTLS, {calls} calls across 1,000 servers: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            # Offer ever more faults per second; the figure is the best rate the subscriber kept up with.
            rate = 0.0
            for offered in (1_000, 2_000, 4_000, 8_000, 16_000):
                got = health_rate(big.info["address"], console, big, offered, 1.5 if args.quick else 3.0)
                print(f"health events to one fleet-wide subscriber: {got:8,.0f}/s with {offered:,} faults/s fired")
                rate = max(rate, got)
                if got < 0.8 * offered:
                    break
        finally:
            big.close()

    result = {
        "rss_mib_100": round(rss_100, 1),
        "rss_mib_1000": round(rss_1000, 1),
        "inventory_p50_ms": round(p50, 3),
        "inventory_p99_ms": round(p99, 3),
        "health_events_per_s": round(rate, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
