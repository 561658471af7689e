"""fleet.placement: partition-aligned best fit over a plain fleet snapshot (no database)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.placement import (
    FIRSTFIT,
    FreeBlockIndex,
    NoFit,
    Placement,
    Request,
    place,
    place_bruteforce,
    place_on_snapshot,
)
from fleet.snapshot import GpuSnapshot, ServerSnapshot, with_placement
from hardware.platforms import HGX_A100, HGX_H100

H100_PAIRS = {(1, 3), (2, 4), (5, 7), (6, 8)}
FW = HGX_H100.pinned_firmware


def server(
    sid=1,
    *,
    platform=HGX_H100,
    busy=(),
    states=None,
    unhealthy=(),
    state="active",
    active=(),
    rack="r1",
    temps=None,
    firmware=None,
    tenant="t-busy",
):
    """An HGX server; `busy` GPUs are in use by `tenant`, `states` overrides single GPU states."""
    states = dict(states or {})
    gpus = {}
    for m in platform.gpu_ids:
        st_ = states.get(m, "in_use" if m in busy else "free")
        gpus[m] = GpuSnapshot(
            module_id=m,
            state=st_,
            healthy=m not in unhealthy,
            firmware_version=(firmware or {}).get(m, platform.pinned_firmware),
            temperature_c=(temps or {}).get(m, 35.0),
            tenant=tenant if st_ in ("in_use", "reserved") else None,
        )
    return ServerSnapshot(sid, f"gpu{sid:03d}", platform.key, rack, state, gpus, frozenset(active))


def both(servers, request, policy="bestfit"):
    """Place through the index and by brute force; they must agree."""
    via_index = place(FreeBlockIndex(servers), request, policy)
    assert via_index == place_bruteforce(servers, request, policy)
    return via_index


# --- alignment ------------------------------------------------------------------------------------


def test_two_gpus_get_an_nvlink_pair_never_1_2():
    p = both([server()], Request(2))
    assert isinstance(p, Placement)
    assert p.gpu_module_ids in H100_PAIRS
    assert p.gpu_module_ids != (1, 2)


@given(busy=st.sets(st.integers(1, 8)))
@settings(max_examples=60)
def test_two_gpu_leases_are_always_pairs(busy):
    p = both([server(busy=busy)], Request(2))
    if isinstance(p, Placement):
        assert p.gpu_module_ids in H100_PAIRS
        assert not set(p.gpu_module_ids) & busy
    else:
        assert all(set(pair) & busy for pair in H100_PAIRS)


def test_four_gpus_get_a_half_board():
    assert both([server()], Request(4)).gpu_module_ids in {(1, 2, 3, 4), (5, 6, 7, 8)}
    assert both([server(busy={2})], Request(4)).gpu_module_ids == (5, 6, 7, 8)
    assert both([server(busy={2})], Request(4)).partition_id == 2


def test_eight_gpus_need_a_whole_server():
    assert both([server()], Request(8)) == Placement(1, 0, (1, 2, 3, 4, 5, 6, 7, 8), ())
    assert isinstance(both([server(busy={8})], Request(8)), NoFit)


# --- best fit --------------------------------------------------------------------------------------


def test_pair_whose_sibling_is_busy_beats_breaking_a_free_block():
    # GPUs 2 and 4 busy: pair {1,3} is a lone free pair, {5..8} a whole free 4-block.
    p = both([server(busy={2, 4})], Request(2))
    assert p.gpu_module_ids == (1, 3)
    # and across servers: the fully free server is left alone
    p = both([server(1), server(2, busy={1, 2, 3, 4, 6, 8})], Request(2))
    assert (p.server_id, p.gpu_module_ids) == (2, (5, 7))


def test_single_gpu_goes_to_the_most_used_server():
    fleet = [server(1), server(2, busy={1, 2, 3}), server(3, busy={1, 2, 3, 4, 5, 6, 8})]
    p = both(fleet, Request(1))
    assert (p.server_id, p.gpu_module_ids) == (3, (7,))


@given(sizes=st.permutations([1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 8]).map(list))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_fill_keeps_whole_servers_free_for_eight_gpu_requests(sizes):
    # 28 GPUs on five servers: best fit packs them into 3.5 servers, so one whole server stays free.
    index = FreeBlockIndex([server(sid, rack=f"r{sid % 2}") for sid in range(1, 6)])
    for i, k in enumerate(sizes):
        p = index.place(Request(k, tenant=f"t{i % 3}"))
        assert isinstance(p, Placement), p
        index.reserve(p, tenant=f"t{i % 3}")
    whole = [s for s in index.servers() if all(g.state == "free" for g in s.gpus.values())]
    assert len(whole) == 1
    assert isinstance(index.place(Request(8)), Placement)


def test_small_lease_joins_the_blocks_that_already_hold_more_leases():
    # Same free GPUs (1, 3, 5..8) on both servers; server 1's half {1..4} runs one pair lease (2, 4),
    # server 2's runs two single leases (GPUs 2 and 4). Server 2's half will be whole again later,
    # so a single lands there; the plain "smallest block, most used server" rule could not tell.
    pair_lease = server(1, busy={2, 4}, active={4})
    two_singles = server(2, busy={2, 4}, active={8, 10})
    p = both([pair_lease, two_singles], Request(1))
    assert p.server_id == 2 and p.gpu_module_ids in {(1,), (3,)}
    p = both([pair_lease, two_singles], Request(2))
    assert (p.server_id, p.gpu_module_ids) == (2, (1, 3))


def test_unavailable_gpus_count_as_occupants():
    # GPU 2 quarantined on server 1, GPU 2 leased alone on server 2: a 1-GPU lease takes GPU 4 on
    # either (lone single, same block scores), then the server with more occupants: server 3 holds
    # GPU 6 too.
    fleet = [
        server(1, states={2: "quarantined"}),
        server(2, busy={2}, active={8}),
        server(3, busy={2, 6}, active={8, 12}),
    ]
    assert both(fleet, Request(1)) == Placement(3, 10, (4,), ())
    assert both(fleet[:2], Request(1)).gpu_module_ids == (4,)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 6), k=st.sampled_from([1, 2, 4]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_whole_free_server_is_split_only_when_nothing_else_fits(seed, n, k):
    rnd = random.Random(seed)
    fleet = [random_server(rnd, sid) for sid in range(1, n + 1)]
    got = both(fleet, Request(k))

    def whole_free(s):  # could take an 8-GPU lease (idle 1-GPU partitions may be switched off)
        return isinstance(place_bruteforce([s], Request(8)), Placement)

    elsewhere = [
        s
        for s in fleet
        if s.schedulable and not whole_free(s) and isinstance(place_bruteforce([s], Request(k)), Placement)
    ]
    if elsewhere:
        assert isinstance(got, Placement)
        assert not whole_free(next(s for s in fleet if s.server_id == got.server_id))


def test_first_fit_takes_the_first_partition_in_id_order():
    fleet = [server(1), server(2, busy={1, 2, 3, 4, 6, 8})]
    assert both(fleet, Request(2), FIRSTFIT) == Placement(1, 3, (1, 3), ())
    assert both(fleet, Request(2)) == Placement(2, 5, (5, 7), ())


# --- what must never be offered -------------------------------------------------------------------


@pytest.mark.parametrize("gpu_state", ["quarantined", "offline", "draining", "drained", "scrubbing", "leveling"])
def test_partitions_with_a_non_free_gpu_are_hidden(gpu_state):
    s = server(states={3: gpu_state})
    assert both([s], Request(2)).gpu_module_ids != (1, 3)
    assert both([s], Request(4)).gpu_module_ids == (5, 6, 7, 8)
    assert isinstance(both([s], Request(8)), NoFit)


def test_unhealthy_free_gpu_is_hidden():
    s = server(unhealthy={5})
    assert both([s], Request(4)).gpu_module_ids == (1, 2, 3, 4)
    assert all(5 not in both([s], Request(1)).gpu_module_ids for _ in range(2))
    assert isinstance(both([s], Request(8)), NoFit)


@pytest.mark.parametrize("state", ["cordoned", "draining", "drained", "maintenance", "unreachable"])
def test_unschedulable_servers_get_nothing(state):
    r = both([server(1, state=state)], Request(1))
    assert isinstance(r, NoFit)
    assert f"1 {state}" in r.reason and "not schedulable" in r.reason
    p = both([server(1, state=state), server(2, busy={1})], Request(1))
    assert p.server_id == 2


def test_excluded_servers_are_skipped():
    fleet = [server(1, busy={1}), server(2)]
    assert both(fleet, Request(1)).server_id == 1
    assert both(fleet, Request(1, exclude_servers=frozenset({1}))).server_id == 2
    r = both(fleet, Request(1, exclude_servers=frozenset({1, 2})))
    assert isinstance(r, NoFit) and "2 servers excluded by the request" in r.reason


# --- active partitions -----------------------------------------------------------------------------


def test_idle_single_gpu_partitions_are_deactivated_first():
    # 1-GPU partitions of GPUs 1 and 2 (ids 7, 8) left active and idle.
    s = server(active={7, 8})
    assert both([s], Request(8)) == Placement(1, 0, (1, 2, 3, 4, 5, 6, 7, 8), (7, 8))
    p = both([server(active={7, 8}, busy={5, 6, 7, 8})], Request(4))
    assert p == Placement(1, 1, (1, 2, 3, 4), (7, 8))


def test_busy_or_larger_overlapping_partition_blocks():
    # pair {1,3} (id 3) active and running: the 4-block and the whole board are "in use"
    s = server(active={3}, busy={1, 3})
    assert isinstance(both([s], Request(8)), NoFit)
    assert both([s], Request(4)).gpu_module_ids == (5, 6, 7, 8)
    # an idle active pair is someone's layout: never switched off for us, not even for a 1-GPU lease
    s = server(active={3})
    assert both([s], Request(4)).gpu_module_ids == (5, 6, 7, 8)
    assert both([s], Request(2)).gpu_module_ids != (1, 3)
    assert both([server(active={3}, busy={2, 4, 5, 6, 7, 8})], Request(1)) == NoFit(
        "no 1-GPU partition free; 1 server has 1 or more free GPUs but not aligned to a free 1-GPU partition"
    )


# --- other platforms -------------------------------------------------------------------------------


def test_a100_uses_its_own_partition_ids():
    s = server(platform=HGX_A100)
    assert both([s], Request(8)).partition_id == 1
    assert both([s], Request(4)).partition_id in {3, 4}
    assert both([s], Request(2)).partition_id in {7, 8, 9, 10}
    assert both([s], Request(2)).gpu_module_ids in H100_PAIRS
    assert both([s], Request(1)).partition_id in range(15, 23)
    mixed = [server(1), server(2, platform=HGX_A100, busy={1, 2, 3, 5, 6, 7, 8})]
    assert both(mixed, Request(1)) == Placement(2, 18, (4,), ())


# --- reasons ---------------------------------------------------------------------------------------


def test_non_partition_size_is_refused_with_reason():
    for k in (3, 5, 0, 16):
        r = both([server()], Request(k))
        assert isinstance(r, NoFit)
        assert r.reason.startswith(f"{k} is not a partition size of any platform")


def test_reason_mentions_unaligned_free_gpus():
    # free GPUs 3, 4, 6, 8 on each server: four free, no free half-board
    fleet = [server(sid, busy={1, 2, 5, 7}) for sid in (1, 2, 3)] + [server(4, state="cordoned")]
    r = both(fleet, Request(4))
    assert r == NoFit(
        "no 4-GPU partition free; 3 servers have 4 or more free GPUs but not aligned to a free 4-GPU "
        "partition; 1 server not schedulable (1 cordoned)"
    )
    r = both([server(busy=set(range(1, 8)))], Request(2))
    assert "no schedulable server has 2 free GPUs" in r.reason


# --- tie-breaks ------------------------------------------------------------------------------------


def test_tie_breaks_firmware_then_temperature_then_rack_then_id():
    old = HGX_H100.older_firmware[0]
    busy = {2, 3, 4, 5, 6, 7, 8}  # only GPU 1 free on each server: same block, same server load
    a = server(1, busy=busy, firmware={1: old}, temps={1: 30.0})
    b = server(2, busy=busy, temps={1: 60.0})
    assert both([a, b], Request(1)).server_id == 2  # pinned firmware beats cooler
    c = server(3, busy=busy, temps={1: 40.0})
    assert both([a, b, c], Request(1)).server_id == 3  # cooler
    d = server(4, busy=busy, temps={1: 40.0}, rack="r2", tenant="other")
    assert both([c, d], Request(1, tenant="acme")).server_id == 3  # ids when racks are even
    # acme already holds GPUs in r1 (server 3's rack): spread to r2
    c_acme = server(3, busy=busy, temps={1: 40.0}, tenant="acme")
    assert both([c_acme, d], Request(1, tenant="acme")).server_id == 4
    assert both([c_acme, d], Request(1, tenant="zeta")).server_id == 3


# --- index == brute force --------------------------------------------------------------------------


def random_server(rnd: random.Random, sid: int) -> ServerSnapshot:
    platform = rnd.choice([HGX_H100, HGX_H100, HGX_A100])
    s = server(
        sid,
        platform=platform,
        state=rnd.choice(["active"] * 6 + ["cordoned", "draining", "maintenance"]),
        rack=f"r{rnd.randrange(3)}",
        states={m: rnd.choice(["quarantined", "offline", "draining"]) for m in rnd.sample(range(1, 9), 1)}
        if rnd.random() < 0.2
        else None,
        unhealthy={rnd.randrange(1, 9)} if rnd.random() < 0.1 else (),
        temps={m: float(rnd.choice([30, 35, 40])) for m in range(1, 9)},
        firmware={m: platform.older_firmware[0] for m in range(1, 9) if rnd.random() < 0.1},
    )
    # occupy random partitions like real leases do, plus some idle active 1-GPU partitions
    for _ in range(rnd.randrange(4)):
        k = rnd.choice(platform.partition_sizes)
        p = place_bruteforce([s], Request(k)) if s.schedulable else None
        if isinstance(p, Placement):
            s = with_placement(s, p, tenant=rnd.choice(["acme", "zeta", None]))
    idle = [p.id for p in platform.partitions if p.size == 1 and s.gpus[p.gpus[0]].available]
    extra = set(rnd.sample(idle, min(len(idle), rnd.randrange(3))))
    return ServerSnapshot(
        s.server_id, s.hostname, s.platform_key, s.rack, s.state, s.gpus, s.active_partition_ids | extra
    )


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 8), steps=st.integers(1, 25))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_index_updates_match_bruteforce(seed, n, steps):
    rnd = random.Random(seed)
    fleet = {sid: random_server(rnd, sid) for sid in range(1, n + 1)}
    index = FreeBlockIndex(fleet.values())
    leases: list[tuple[int, int]] = []
    for _ in range(steps):
        request = Request(
            rnd.choice([1, 1, 2, 2, 4, 8, 3]),
            tenant=rnd.choice(["acme", "zeta", None]),
            exclude_servers=frozenset(rnd.sample(range(1, n + 1), rnd.randrange(min(n, 2) + 1))),
        )
        policy = rnd.choice(["bestfit", "bestfit", FIRSTFIT])
        got = index.place(request, policy)
        assert got == place_bruteforce(fleet.values(), request, policy)
        op = rnd.random()
        if isinstance(got, Placement) and op < 0.6:
            index.reserve(got, tenant=request.tenant)
            fleet[got.server_id] = with_placement(fleet[got.server_id], got, request.tenant)
            leases.append((got.server_id, got.partition_id))
        elif leases and op < 0.85:
            sid, pid = leases.pop(rnd.randrange(len(leases)))
            index.release(sid, pid)
            fleet[sid] = index.server(sid)
        else:
            sid = rnd.randrange(1, n + 1)
            fleet[sid] = random_server(rnd, sid)
            index.update(fleet[sid])
            leases = [lease for lease in leases if lease[0] != sid]  # a new snapshot, new leases
        assert sorted(index.servers(), key=lambda s: s.server_id) == [fleet[s] for s in sorted(fleet)]


def test_place_on_snapshot_and_place_on_a_list_agree():
    fleet = [server(1, busy={1}), server(2)]
    assert place_on_snapshot(fleet, Request(2)) == place(fleet, Request(2)) == place_bruteforce(fleet, Request(2))


def test_index_compacts_stale_entries_and_stays_correct():
    index = FreeBlockIndex([server(sid) for sid in range(1, 4)])
    for i in range(3000):
        p = index.place(Request(1 + (i % 2)))
        index.reserve(p)
        index.release(p.server_id, p.partition_id)
    assert index._pushed <= 4 * index._live + 20_000
    assert index.place(Request(8)) == place_bruteforce(index.servers(), Request(8))


def test_removed_servers_are_forgotten():
    index = FreeBlockIndex([server(1, busy={1}), server(2, state="cordoned")])
    assert index.place(Request(1)).server_id == 1
    index.remove(1)
    assert 1 not in index and len(index) == 1
    assert index.place(Request(1)) == NoFit(
        "no 1-GPU partition free; no schedulable server has 1 free GPU; 1 server not schedulable (1 cordoned)"
    )


def test_unknown_temperature_counts_as_hottest():
    busy = {2, 3, 4, 5, 6, 7, 8}
    fleet = [server(1, busy=busy, temps={1: float("nan")}), server(2, busy=busy, temps={1: 80.0})]
    assert both(fleet, Request(1)).server_id == 2


def test_the_snapshot_state_names_are_the_models():
    from fleet import snapshot
    from fleet.states import SERVER_MACHINE, GpuState, ServerState

    assert snapshot.GPU_FREE == GpuState.FREE and snapshot.GPU_RESERVED == GpuState.RESERVED
    assert {ServerState.ACTIVE} == snapshot.SCHEDULABLE_SERVER_STATES
    assert set(snapshot.SCHEDULABLE_SERVER_STATES) <= set(SERVER_MACHINE.states)
