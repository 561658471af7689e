"""GPU temperature telemetry: the simulated host samples its GPUs (idle or under a VM's load) and
reports on the health stream what moved; a served host's telemetry reaches a gRPC client."""

from __future__ import annotations

import random
import threading

import pytest

from hardware.types import HealthKind
from simulator.clock import SimClock
from simulator.host import IDLE_TEMPERATURE_C, LOADED_TEMPERATURE_C, TEMPERATURE_REFRESH_SAMPLES, SimHost
from simulator.telemetry import TelemetryProcess
from tests.simulator.support import served_host


def _temperatures(events) -> dict[int, float]:
    assert all(e.kind == HealthKind.TEMPERATURE and e.hostname == "h" for e in events)
    return {e.module_id: e.temperature_c for e in events}


def test_first_sample_reports_every_gpu_then_what_moved_and_now_and_then_every_gpu():
    host = SimHost("h", "hgx-h100-8", clock=SimClock(1.0))
    rng = random.Random(1)
    first = _temperatures(host.sample_temperatures(rng))
    assert sorted(first) == list(range(1, 9))
    counts = [len(host.sample_temperatures(rng)) for _ in range(4 * TEMPERATURE_REFRESH_SAMPLES)]
    assert min(counts) < 8  # idle and settled: noise under a degree is not reported at once
    # ...but every GPU is reported at least once per TEMPERATURE_REFRESH_SAMPLES samples.
    seen: set[int] = set()
    for _ in range(TEMPERATURE_REFRESH_SAMPLES):
        seen |= set(_temperatures(host.sample_temperatures(rng)))
    assert seen == set(range(1, 9))
    assert all(IDLE_TEMPERATURE_C - 2 <= g.temperature_c <= IDLE_TEMPERATURE_C + 5 for g in host.gpus.values())


def test_a_vm_warms_its_gpus_and_they_cool_after_it_stops():
    clock = SimClock(1.0)
    host = SimHost("h", "hgx-h100-8", clock=clock)
    rng = random.Random(2)
    host.sample_temperatures(rng)
    host.activate_partition(4)  # a 2-GPU partition of the platform's table
    modules = tuple(sorted(host.platform.partitions_by_id[4].gpus))
    host.start_vm("v", "pod", modules, 64)
    for _ in range(8):
        host.sample_temperatures(rng)
    loaded = {m: host.gpus[m].temperature_c for m in modules}
    assert all(value >= LOADED_TEMPERATURE_C - 2 for value in loaded.values()), loaded
    idle = [g.temperature_c for m, g in host.gpus.items() if m not in modules]
    assert max(idle) < LOADED_TEMPERATURE_C - 20
    host.stop_vm("v")
    cooled = _temperatures(host.sample_temperatures(rng))
    assert set(modules) <= set(cooled) and all(cooled[m] < loaded[m] - 10 for m in modules)


def test_a_lost_gpu_reports_nothing():
    host = SimHost("h", "hgx-h100-8", clock=SimClock(1.0))
    host.inject_xid(3, 79)  # fell off the bus
    assert 3 not in _temperatures(host.sample_temperatures(random.Random(3)))


def test_the_process_needs_a_positive_interval():
    with pytest.raises(ValueError, match="interval_s"):
        TelemetryProcess([SimHost("h", "hgx-h100-8")], interval_s=0)


def test_telemetry_reaches_a_grpc_client_on_the_health_stream(pki):
    with served_host(pki) as (host, client):
        stream = client.watch_health()
        received: list = []
        subscribed = threading.Event()

        def consume():
            for event in stream:
                if event.kind != HealthKind.TEMPERATURE:  # the Xid (and what it brings, e.g. ECC counts)
                    subscribed.set()
                    continue
                received.append(event)
                if len({e.module_id for e in received}) == 8:
                    return

        reader = threading.Thread(target=consume)
        reader.start()
        # An Xid that arrives proves the agent holds the subscription: the first sample is not missed.
        while not subscribed.wait(0.1):
            client.sim_admin().inject_xid(1, 94)
        telemetry = TelemetryProcess([host], seed=4, interval_s=0.05).start()
        reader.join(timeout=10)
        telemetry.stop()
        stream.cancel()
    assert sorted(e.module_id for e in received[:8]) == list(range(1, 9))  # the first sample: every GPU
    assert all(e.temperature_c is not None and e.hostname == "node-a" for e in received)
