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
* `watcher_streams_1000`: streams one watcher process (another child: `AsyncAgentStreams` on one
  grpc.aio channel + `StreamSupervisor`, as the console's node watcher) holds open against the
  1,000-server fleet: a WatchHealth per server plus a WatchBoot for each of `BOOT_VMS` booting
  8-GPU VMs; `watcher_ready_s` how long opening them all took, `watcher_rss_mib` its memory.
* `inventory_p99_ms_while_watching_1000` (and `_p50_`): GetInventory from this process while those
  streams are held; `inventory_p99_ms_without_watching` the same calls just before the watcher
  started, for comparison (the VMs already booting).
* `watcher_health_events_per_s`: health events per second the watcher's 1,000 per-server streams
  deliver to its callbacks while the fault process fires `WATCH_FAULTS_PER_S` across the fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardware.agent_aio import AsyncAgentStreams
from hardware.agent_client import AgentClient
from hardware.stream_supervisor import StreamSupervisor
from hardware.tls import TlsIdentity, issue_cert, make_dev_ca

BOOT_VMS = 200  # 8-GPU VMs booting (about 29 real seconds each at 60x) while the watcher holds its streams
WATCH_FAULTS_PER_S = 500


def _status(field: str, pid: str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return float("nan")


def _rss_mib() -> float:
    return _status("VmRSS") / 1024


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
        if command == "vms":
            # One 8-GPU VM on each of the first N hosts; WatchBoot follows it for ~29 real seconds.
            vms = {}
            for name in list(fleet.hosts)[: int(value)]:
                host = fleet.hosts[name]
                host.start_vm(f"vm-{name}", f"pod-{name}", sorted(host.gpus), guest_ram_gib=64)
                vms[f"vm-{name}"] = name
            print(json.dumps(vms), flush=True)
            continue
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


def watcher(address: str, tls_dir: Path) -> int:
    """The node watcher's hardware side in its own process: stdin gets the hosts and VMs (one JSON
    line), then `report` (print the counters) or `stop`."""
    console = TlsIdentity.from_dir(tls_dir, "console")
    job = json.loads(sys.stdin.readline())
    return asyncio.run(_watch(address, console, job["hosts"], job["vms"]))


async def _watch(address: str, console: TlsIdentity, hosts: list[str], vms: dict[str, str]) -> int:
    counts = {"health": 0, "boot": 0}

    def count(kind: str):
        def record(key, item) -> None:
            counts[kind] += 1

        return record

    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    async with AsyncAgentStreams(credentials=console) as streams:
        health = StreamSupervisor(count("health"), name="health")
        boot = StreamSupervisor(count("boot"), name="boot", restart_on_end=False)
        await health.set_desired({h: (lambda h=h: streams.watch_health(address, h)) for h in hosts})
        await boot.set_desired({vm: (lambda h=h, vm=vm: streams.watch_boot(address, h, vm)) for vm, h in vms.items()})
        while health.connected < len(hosts) or boot.connected + _finished(boot) < len(vms):
            await asyncio.sleep(0.05)
            if time.perf_counter() - t0 > 120:
                break
        ready_s = time.perf_counter() - t0

        def report() -> dict:
            return {
                "ready_s": round(ready_s, 2),
                "health_connected": health.connected,
                "boot_connected": boot.connected,
                "boot_finished": _finished(boot),
                "channels": len(streams.endpoints),
                "failures": sum(st.failures for sup in (health, boot) for st in sup.stats.values()),
                "health_events": counts["health"],
                "boot_events": counts["boot"],
                "rss_mib": round(_rss_mib(), 1),
                "threads": int(_status("Threads")),
            }

        print(json.dumps(report()), flush=True)
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line != "report":
                break
            print(json.dumps(report()), flush=True)
        await health.stop()
        await boot.stop()
    return 0


def _finished(sup: StreamSupervisor) -> int:
    return sum(st.finished for st in sup.stats.values())


class Watcher:
    def __init__(self, address: str, tls_dir: Path, hosts: list[str], vms: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--watcher", address, "--tls-dir", str(tls_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.proc.stdin.write(json.dumps({"hosts": hosts, "vms": vms}) + "\n")
        self.proc.stdin.flush()
        self.info = json.loads(self.proc.stdout.readline())

    def report(self) -> dict:
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def watching(big: Child, tls_dir: Path, console: TlsIdentity, calls: int, window_s: float) -> dict:
    """GetInventory latency without and with a watcher holding every server's streams."""
    address, hosts = big.info["address"], big.info["hosts"]
    vms = json.loads(big.send(f"vms {BOOT_VMS}"))
    before = inventory_latency(address, hosts, console, calls)
    w = Watcher(address, tls_dir, hosts, vms)
    try:
        held = w.info["health_connected"] + w.info["boot_connected"]
        print(
            f"watcher: {w.info['health_connected']:,} health + {w.info['boot_connected']} boot streams open in"
            f" {w.info['ready_s']:.1f} s on {w.info['channels']} channel, one process"
            f" ({w.info['rss_mib']:.0f} MiB RSS, {w.info['threads']} threads); fleet"
            f" {_rss_mib_of(big):.0f} MiB RSS, {int(_status('Threads', str(big.proc.pid)))} threads"
        )
        during = inventory_latency(address, hosts, console, calls)
        after = w.report()
        start = after["health_events"]
        big.send(f"faults {WATCH_FAULTS_PER_S}")
        time.sleep(window_s)
        events = w.report()["health_events"] - start
        big.send("stop")
    finally:
        w.close()
    result = {
        "watcher_streams_1000": held,
        "watcher_streams_still_open": after["health_connected"] + after["boot_connected"],
        "watcher_boot_streams": w.info["boot_connected"],
        "watcher_boot_events": after["boot_events"],
        "watcher_failures": after["failures"],
        "watcher_ready_s": w.info["ready_s"],
        "watcher_rss_mib": w.info["rss_mib"],
        "inventory_p99_ms_without_watching": round(pct(before, 0.99), 3),
        "inventory_p50_ms_while_watching_1000": round(statistics.median(during), 3),
        "inventory_p99_ms_while_watching_1000": round(pct(during, 0.99), 3),
        "watcher_health_events_per_s": round(events / window_s, 1),
    }
    print(
        f"GetInventory, {calls} calls, without the watcher: p50 {statistics.median(before):.2f} ms,"
        f" p99 {result['inventory_p99_ms_without_watching']:.2f} ms; while it holds {held:,} streams:"
        f" p50 {result['inventory_p50_ms_while_watching_1000']:.2f} ms,"
        f" p99 {result['inventory_p99_ms_while_watching_1000']:.2f} ms"
    )
    print(
        f"streams still open after the calls: {result['watcher_streams_still_open']:,} (boot phases received:"
        f" {after['boot_events']:,}, stream failures: {after['failures']}); health events through the 1,000"
        f" per-server streams: {result['watcher_health_events_per_s']:,.0f}/s with {WATCH_FAULTS_PER_S}"
        " faults/s fired"
    )
    return result


def _rss_mib_of(child: Child) -> float:
    return _status("VmRSS", str(child.proc.pid)) / 1024


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--child", type=int)
    p.add_argument("--watcher", help="(internal) run the watcher process against this address")
    p.add_argument("--tls-dir", type=Path)
    p.add_argument("--quick", action="store_true", help="fewer calls and a shorter health window")
    args = p.parse_args()
    if args.child:
        return child(args.child, args.tls_dir)
    if args.watcher:
        return watcher(args.watcher, args.tls_dir)

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
        # A fresh fleet for the watcher (the fault storm above took GPUs off the bus).
        fresh = Child(1000, tls_dir)
        try:
            watched = watching(fresh, tls_dir, console, calls, 1.5 if args.quick else 3.0)
        finally:
            fresh.close()

    result = {
        "rss_mib_100": round(rss_100, 1),
        "rss_mib_1000": round(rss_1000, 1),
        "inventory_p50_ms": round(p50, 3),
        "inventory_p99_ms": round(p99, 3),
        "health_events_per_s": round(rate, 1),
        **watched,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
