"""Periodic GPU telemetry over a set of simulated hosts: one thread samples every host's GPU
temperatures every `interval_s` real seconds (a temperature is physics, not simulated time: the
clock's acceleration does not speed it up) and the hosts report what moved on their health streams,
as a real agent reports its DCGM samples. The noise is seeded."""

from __future__ import annotations

import random
from collections.abc import Sequence

from simulator.background import FleetThread
from simulator.host import SimHost

DEFAULT_INTERVAL_S = 10.0


class TelemetryProcess(FleetThread):
    thread_name = "sim-telemetry"

    def __init__(self, hosts: Sequence[SimHost], *, seed: int = 0, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        super().__init__()
        self.hosts = list(hosts)
        self.rng = random.Random(seed)
        self.interval_s = interval_s
        self.reported = 0

    def sample(self) -> int:
        """Sample every host once; returns how many temperatures were reported."""
        reported = sum(len(host.sample_temperatures(self.rng)) for host in self.hosts)
        self.reported += reported
        return reported

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

