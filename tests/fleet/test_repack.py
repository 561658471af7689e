"""bench/placement.py's fragmentation check: the figure the packing target is judged by is only as
good as its answer to "would these leases fit if placed again from scratch?"."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.snapshot import GpuSnapshot, ServerSnapshot
from hardware.platforms import HGX_A100, HGX_H100, get_platform


@cache
def bench():
    path = Path(__file__).resolve().parents[2] / "bench" / "placement.py"
    spec = importlib.util.spec_from_file_location("bench_placement", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def server(sid, *, platform=HGX_H100, quarantined=(), state="active"):
    gpus = {
        m: GpuSnapshot(m, "quarantined" if m in quarantined else "free", m not in quarantined, platform.pinned_firmware)
        for m in platform.gpu_ids
    }
    return ServerSnapshot(sid, f"gpu{sid:03d}", platform.key, "r1", state, gpus)


def fits_bruteforce(fleet, sizes) -> bool:
    """Every way of placing the leases, largest first, on usable partitions of active servers."""
    blocks = {
        k: [
            (si, frozenset(p.gpus))
            for si, s in enumerate(fleet)
            if s.state == "active"
            for p in get_platform(s.platform_key).partitions_of_size(k)
            if all(s.gpus[g].healthy and s.gpus[g].state == "free" for g in p.gpus)
        ]
        for k in set(sizes)
    }
    order = sorted(sizes, reverse=True)
    seen: set = set()

    def go(i: int, used: frozenset) -> bool:
        if i == len(order):
            return True
        if (i, used) in seen:
            return False
        seen.add((i, used))
        return any(
            go(i + 1, used | {(si, g) for g in gpus})
            for si, gpus in blocks[order[i]]
            if not any((si, g) in used for g in gpus)
        )

    return go(0, frozenset())


def test_two_singles_and_a_whole_server_fit_on_two_servers_only_packed_together():
    fleet = [server(1), server(2)]
    assert bench().repack_ilp(fleet, [1, 1, 8]) is True
    assert bench().repack_ilp(fleet, [1, 8, 8]) is False
    assert bench().repack_ilp_per_lease(fleet, [1, 1, 8]) is True
    assert bench().greedy_repack(fleet, [1, 1, 8]) is True


def test_a_quarantined_gpu_and_a_cordoned_server_take_their_blocks_away():
    fleet = [server(1, quarantined={5}), server(2, state="cordoned")]
    assert bench().repack_ilp(fleet, [8]) is False
    assert bench().repack_ilp(fleet, [4, 2, 1]) is True  # 1-4, then 6+8 and 7 around the dead GPU
    assert bench().repack_ilp(fleet, [4, 4]) is False
    assert bench().repack_ilp(fleet, [4, 2, 1, 1]) is False  # 7 usable GPUs


@st.composite
def fleets_and_sizes(draw):
    fleet = []
    for sid in range(1, draw(st.integers(1, 3)) + 1):
        platform = draw(st.sampled_from([HGX_H100, HGX_H100, HGX_A100]))
        quarantined = draw(st.sets(st.sampled_from(list(platform.gpu_ids)), max_size=3))
        state = draw(st.sampled_from(["active", "active", "active", "cordoned"]))
        fleet.append(server(sid, platform=platform, quarantined=quarantined, state=state))
    sizes = draw(st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=8))
    return fleet, sizes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets_and_sizes())
def test_the_ilp_per_size_answers_like_the_ilp_per_lease_and_an_exhaustive_search(case):
    fleet, sizes = case
    truth = fits_bruteforce(fleet, sizes)
    assert bench().repack_ilp(fleet, sizes) is truth
    assert bench().repack_ilp_per_lease(fleet, sizes) is truth
    # The greedy certificate may miss a packing, never invent one.
    if bench().greedy_repack(fleet, sizes):
        assert truth
