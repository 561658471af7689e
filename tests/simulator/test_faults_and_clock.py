"""The seeded fault process and the accelerated clock."""

from __future__ import annotations

import threading
import time

import pytest

from simulator.clock import SimClock
from simulator.events import EventHub
from simulator.faults import FaultProcess
from simulator.host import SimHost


def run_faults(seed):
    clock, hub = SimClock(1.0), EventHub()
    hosts = [SimHost(f"h{i}", "hgx-h100-8", clock=clock, hub=hub) for i in range(5)]
    sub = hub.subscribe()
    process = FaultProcess(hosts, seed=seed, rate_per_gpu_hour=20.0)
    for _ in range(100):
        process.step()
    sub.close()
    return [(e.hostname, e.module_id, e.kind, e.xid) for e in sub]


def test_fault_process_is_deterministic_per_seed():
    first = run_faults(1)
    assert first and first == run_faults(1)
    assert first != run_faults(2)


def test_fault_process_thread_injects_on_the_clock():
    clock, hub = SimClock(3600.0), EventHub()
    host = SimHost("h", "hgx-h100-8", clock=clock, hub=hub)
    process = FaultProcess([host], seed=0, rate_per_gpu_hour=50.0).start()
    time.sleep(0.5)
    process.stop()
    assert process.injected > 0


def test_clock_advances_at_its_acceleration_and_jumps():
    clock = SimClock(100.0)
    start = clock.seconds()
    time.sleep(0.05)
    assert 3 <= clock.seconds() - start <= 30
    clock.advance(1000)
    assert clock.seconds() - start >= 1000
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_waiters_wake_on_a_jump():
    clock = SimClock(1.0)
    target = clock.seconds() + 3600
    done = threading.Event()
    thread = threading.Thread(target=lambda: clock.wait_until(target) and done.set())
    thread.start()
    clock.advance(3601)
    thread.join(timeout=2)
    assert done.is_set()
