"""The workload generator's request schedule: a pure function of a seed and the parameters.

Arrivals are a Poisson process (exponential gaps at `rate_per_min`); each arrival draws a tenant, a
size from the weighted mix and a lifetime from the range. Arrival `i` is drawn from its own RNG,
seeded by (seed, i), so it can be computed without replaying the ones before it; only its time
needs the previous arrival's (kept as `last_at_s`). The same seed and parameters give the same
requests, whatever the clock, the fleet or the process that runs them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from hardware.platforms import all_partition_sizes

MAX_RATE_PER_MIN = 600.0
MAX_TENANTS = 50
MAX_LIFETIME_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Params:
    rate_per_min: float  # requests per (real) minute, on average
    sizes: tuple[tuple[int, float], ...]  # (GPUs, weight)
    lifetime_min_s: int  # from the request to its release
    lifetime_max_s: int
    tenants: int

    def errors(self) -> dict[str, str]:
        """Field → what is wrong, in words; empty when the parameters are usable."""
        out: dict[str, str] = {}
        if not 0 < self.rate_per_min <= MAX_RATE_PER_MIN:
            out["rate_per_min"] = f"the arrival rate must be above 0 and at most {MAX_RATE_PER_MIN:g} per minute"
        valid = set(all_partition_sizes())
        if not self.sizes or any(w < 0 for _, w in self.sizes) or sum(w for _, w in self.sizes) <= 0:
            out["sizes"] = "give at least one size a positive weight"
        elif bad := sorted({n for n, _ in self.sizes} - valid):
            out["sizes"] = f"{', '.join(map(str, bad))} GPUs is not a partition size; use {sorted(valid)}"
        if not 1 <= self.lifetime_min_s <= self.lifetime_max_s <= MAX_LIFETIME_S:
            out["lifetime"] = "the lifetime range must satisfy 1 s ≤ shortest ≤ longest ≤ 7 days"
        if not 1 <= self.tenants <= MAX_TENANTS:
            out["tenants"] = f"between 1 and {MAX_TENANTS} tenants"
        return out


@dataclass(frozen=True)
class Arrival:
    index: int
    at_s: float  # seconds after the generator started
    tenant: int  # 1 … tenants
    gpu_count: int
    lifetime_s: int


def _draw(seed: int, params: Params, index: int) -> tuple[float, int, int, int]:
    """(gap before arrival `index`, tenant, GPUs, lifetime): a string seed hashes the same in every process."""
    rng = random.Random(f"workload/{seed}/{index}")
    gap = rng.expovariate(params.rate_per_min / 60.0)
    tenant = rng.randrange(params.tenants) + 1
    counts, weights = zip(*params.sizes, strict=True)
    gpu_count = rng.choices(counts, weights)[0]
    lifetime = rng.randint(params.lifetime_min_s, params.lifetime_max_s)
    return gap, tenant, gpu_count, lifetime


def arrivals(seed: int, params: Params, *, start_index: int = 0, last_at_s: float = 0.0) -> Iterator[Arrival]:
    """The arrivals from `start_index` on (endless); `last_at_s` is arrival `start_index - 1`'s time."""
    at, index = last_at_s, start_index
    while True:
        gap, tenant, gpu_count, lifetime = _draw(seed, params, index)
        at += gap
        yield Arrival(index, at, tenant, gpu_count, lifetime)
        index += 1


def schedule(seed: int, params: Params, count: int) -> list[Arrival]:
    """The first `count` arrivals."""
    it = arrivals(seed, params)
    return [next(it) for _ in range(count)]


def parse_sizes(text: str) -> tuple[tuple[int, float], ...]:
    """"1:4, 2:3, 4:2, 8:1" → ((1, 4.0), (2, 3.0), (4, 2.0), (8, 1.0)); ValueError in words."""
    out = []
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        gpus, sep, weight = part.partition(":")
        try:
            out.append((int(gpus), float(weight) if sep else 1.0))
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not GPUs:weight (e.g. 1:4, 2:3, 4:2, 8:1)") from None
    return tuple(out)


def format_sizes(sizes) -> str:
    return ", ".join(f"{n}:{w:g}" for n, w in sizes)
