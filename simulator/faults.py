"""A seeded random fault process over a set of simulated hosts.

It steps through simulated time in fixed steps and draws, per step, how many faults happen across
all GPUs (Poisson with `rate_per_gpu_hour`), then which GPU and which fault. The sequence depends
only on the seed; the real time at which each fault fires depends on the clock's acceleration.
One thread serves a whole fleet, so it costs nothing per host.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from hardware.exceptions import HardwareError
from simulator.background import FleetThread
from simulator.host import SimHost

# (weight, kind, xid): Xid 79 is rare; app-level and ECC faults dominate.
DEFAULT_MIX: tuple[tuple[float, str, int], ...] = (
    (0.20, "xid", 94),
    (0.12, "xid", 48),
    (0.12, "xid", 63),
    (0.05, "xid", 64),
    (0.10, "xid", 74),
    (0.02, "xid", 79),
    (0.06, "xid", 95),
    (0.08, "xid", 119),
    (0.15, "thermal", 0),
    (0.10, "nvlink", 0),
)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 30:  # Knuth's product underflows for large means; the normal approximation is fine there
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


class FaultProcess(FleetThread):
    thread_name = "sim-faults"

    def __init__(
        self,
        hosts: Sequence[SimHost],
        *,
        seed: int = 0,
        rate_per_gpu_hour: float = 0.01,
        step_s: float = 1.0,
        mix: tuple[tuple[float, str, int], ...] = DEFAULT_MIX,
    ) -> None:
        if not hosts:
            raise ValueError("no hosts")
        super().__init__()
        self.hosts = list(hosts)
        self.clock = self.hosts[0].clock
        self.rng = random.Random(seed)
        self.rate_per_gpu_hour = rate_per_gpu_hour
        self.step_s = step_s
        self.mix = mix
        self.injected = 0

    def step(self, step_s: float | None = None) -> int:
        """Draw and inject the faults of one simulated step; returns how many fired."""
        gpus = sum(len(h.gpus) for h in self.hosts)
        count = _poisson(self.rng, self.rate_per_gpu_hour * gpus * (step_s or self.step_s) / 3600.0)
        weights = [w for w, _, _ in self.mix]
        fired = 0
        for _ in range(count):
            host = self.rng.choice(self.hosts)
            module = self.rng.choice(sorted(host.gpus))
            _, kind, xid = self.rng.choices(self.mix, weights)[0]
            try:
                if kind == "xid":
                    host.inject_xid(module, xid)
                elif kind == "thermal":
                    host.inject_thermal(module, float(host.platform.slowdown_temp_c + self.rng.randint(0, 3)))
                else:
                    host.inject_nvlink(module, self.rng.randint(1, 50))
                fired += 1
            except HardwareError:
                pass  # e.g. the GPU already fell off the bus
        self.injected += fired
        return fired

    def _run(self) -> None:
        t = self.clock.seconds()
        while not self._stop.is_set():
            # At most ~20 steps per real second, however fast the clock runs.
            step = max(self.step_s, self.clock.acceleration * 0.05)
            t += step
            if not self.clock.wait_until(t, self._stop):
                return
            self.step(step)

