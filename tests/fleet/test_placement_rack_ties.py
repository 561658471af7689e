"""fleet.placement: the rack-spread tie-break on fleets of identical servers (no database).

On identical servers (same firmware, same temperature) every candidate of a best-fit bucket ties on
everything before rack spread, and `FreeBlockIndex` stops popping the tie at the first entry whose
rack has the lowest load any rack can have for the tenant. These tests check that the choice stays
the brute force's: the minimum over every candidate of the full key.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.placement import FreeBlockIndex, Placement, Request, place_bruteforce
from fleet.snapshot import GpuSnapshot, ServerSnapshot
from hardware.platforms import HGX_H100

TENANTS = ("acme", "zeta", "umbra")


def server(sid: int, rack: str, state: str = "active", temp: float = 35.0) -> ServerSnapshot:
    gpus = {m: GpuSnapshot(m, "free", True, HGX_H100.pinned_firmware, temp) for m in HGX_H100.gpu_ids}
    return ServerSnapshot(sid, f"gpu{sid}", HGX_H100.key, rack, state, gpus)


def agree(index: FreeBlockIndex, request: Request) -> Placement:
    got = index.place(request)
    assert got == place_bruteforce(index.servers(), request)
    return got


def hold(index: FreeBlockIndex, sid: int, k: int, tenant: str) -> None:
    """Give `tenant` a k-GPU lease on server `sid` (best fit within that server)."""
    p = place_bruteforce([index.server(sid)], Request(k))
    assert isinstance(p, Placement)
    index.reserve(p, tenant)


def test_tenant_in_every_rack_goes_to_its_least_loaded_one():
    # 3 racks of 4 servers; acme holds 2 GPUs in r0, 1 in r2 and 3 in r1: every rack has some, so the
    # lowest load is 1 (r2), whose servers come last in id order among the tied fresh ones.
    index = FreeBlockIndex(server(sid, f"r{(sid - 1) // 4}") for sid in range(1, 13))
    hold(index, 1, 2, "acme")  # r0
    hold(index, 5, 2, "acme")  # r1
    hold(index, 5, 1, "acme")  # r1
    hold(index, 9, 1, "acme")  # r2
    # an 8-GPU request only fits fresh servers, all tied: 2..4 (r0), 6..8 (r1), 10..12 (r2)
    assert agree(index, Request(8, tenant="acme")).server_id == 10
    assert agree(index, Request(8, tenant="zeta")).server_id == 2  # no GPUs anywhere: id order
    assert agree(index, Request(8, tenant="acme", exclude_servers=frozenset({10, 11}))).server_id == 12


def test_a_rack_without_the_tenant_but_without_candidates_does_not_stop_the_search():
    # r9 holds none of acme's GPUs (load 0) but its only server is cordoned: no candidate reaches the
    # lowest possible load, so the least loaded rack among the candidates must still win.
    fleet = [server(sid, f"r{(sid - 1) // 3}") for sid in range(1, 10)] + [server(99, "r9", state="cordoned")]
    index = FreeBlockIndex(fleet)
    hold(index, 1, 4, "acme")  # r0: 4
    hold(index, 4, 2, "acme")  # r1: 2
    hold(index, 7, 1, "acme")  # r2: 1
    hold(index, 7, 1, "acme")  # r2: 2
    hold(index, 7, 1, "acme")  # r2: 3
    assert agree(index, Request(8, tenant="acme")).server_id == 5  # r1, the least loaded
    # once the cordoned rack is gone every rack holds acme's GPUs: the lowest load is r1's 2
    index.remove(99)
    assert agree(index, Request(8, tenant="acme")).server_id == 5
    # and back, now active: its rack is empty of acme, so it wins
    index.update(server(99, "r9"))
    assert agree(index, Request(8, tenant="acme")).server_id == 99


def test_a_rack_of_cordoned_servers_still_counts_as_a_rack():
    # acme holds a GPU on cordoned server 1 (alone in rA) and on server 2 (rB); rC holds none of its
    # GPUs. The fleet has three racks, so the lowest possible load is 0, not rA's and rB's 1.
    index = FreeBlockIndex([server(1, "rA"), server(2, "rB"), server(3, "rB"), server(4, "rC")])
    hold(index, 1, 1, "acme")
    hold(index, 2, 1, "acme")
    index.update(replace(index.server(1), state="cordoned"))
    assert agree(index, Request(8, tenant="acme")).server_id == 4


def test_a_server_moved_to_another_rack_counts_there():
    index = FreeBlockIndex(server(sid, f"r{sid % 2}") for sid in range(1, 7))
    hold(index, 2, 2, "acme")  # r0
    assert agree(index, Request(8, tenant="acme")).server_id == 1  # r1
    hold(index, 1, 2, "acme")  # r1 now holds acme too
    assert agree(index, Request(8, tenant="acme")).server_id == 3
    index.update(server(6, "r2"))  # a fresh rack, holding no acme GPUs
    assert agree(index, Request(8, tenant="acme")).server_id == 6


def _vid(sid: int, salt: int) -> int:
    """Server ids as fleet/placement_live.py shows them to the index: a salted rank in front."""
    return (zlib.crc32(b"%d:%d" % (salt, sid)) & 0xFFFFF) << 32 | sid if salt else sid


@given(
    seed=st.integers(0, 2**32 - 1),
    racks=st.integers(1, 5),
    per_rack=st.integers(1, 6),
    salt=st.sampled_from([0, 0, 1, 2]),
    steps=st.integers(1, 40),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_rack_ties_match_bruteforce(seed, racks, per_rack, salt, steps):
    """Identical servers in several racks (ids in rack order or salted), tenants holding GPUs in
    various racks, excluded servers, interleaved reserves, releases and server changes: the index
    must choose what the brute force does, the minimum of the full key over every candidate."""
    rnd = random.Random(seed)
    ids = [_vid(n, salt) for n in range(1, racks * per_rack + 1)]
    rack_of = {sid: f"r{i // per_rack}" for i, sid in enumerate(ids)}
    index = FreeBlockIndex(server(sid, rack_of[sid]) for sid in ids)
    leases: list[tuple[int, int]] = []
    for _ in range(rnd.randrange(2 * len(ids))):  # tenants already hold GPUs here and there
        sid = rnd.choice(ids)
        p = place_bruteforce([index.server(sid)], Request(rnd.choice([1, 1, 2, 4])))
        if isinstance(p, Placement):
            index.reserve(p, rnd.choice(TENANTS))
            leases.append((sid, p.partition_id))
    for _ in range(steps):
        excluded = frozenset(rnd.sample(ids, rnd.randrange(min(len(ids), 3) + 1)) if rnd.random() < 0.3 else ())
        tenant = rnd.choice([*TENANTS, None])
        request = Request(rnd.choice([1, 1, 1, 2, 2, 4, 8]), tenant=tenant, exclude_servers=excluded)
        got = index.place(request)
        assert got == place_bruteforce(index.servers(), request)
        op = rnd.random()
        if isinstance(got, Placement) and op < 0.6:
            index.reserve(got, tenant)
            leases.append((got.server_id, got.partition_id))
        elif leases and op < 0.85:
            index.release(*leases.pop(rnd.randrange(len(leases))))
        elif op < 0.9:
            # a server changes: emptied, cordoned, warmer or moved to another (maybe new) rack
            sid = rnd.choice(ids)
            rack = rnd.choice([rack_of[sid], f"r{rnd.randrange(racks + 1)}"])
            state = rnd.choice(["active", "active", "cordoned"])
            index.update(server(sid, rack, state, temp=rnd.choice([35.0, 35.0, 40.0])))
            leases = [lease for lease in leases if lease[0] != sid]
        elif op < 0.95:
            # cordoned or back to active with its leases: a rack's only servers may hold the tenant's
            # GPUs and offer nothing
            sid = rnd.choice(ids)
            snap = index.server(sid)
            index.update(replace(snap, state="active" if snap.state == "cordoned" else "cordoned"))
        else:
            sid = rnd.choice(ids)
            if sid in index and len(index) > 1:
                index.remove(sid)
                ids.remove(sid)
                leases = [lease for lease in leases if lease[0] != sid]


@pytest.mark.parametrize("salt", [0, 1])
def test_bruteforce_agrees_on_a_full_sized_fleet_of_identical_servers(salt):
    """768 identical servers, 24 racks of 32, 32 tenants filling them as the API benchmark does."""
    index = FreeBlockIndex(server(_vid(n, salt), f"r{(n - 1) // 32:02d}") for n in range(1, 769))
    rnd = random.Random(5)
    for i in range(400):
        tenant = f"t{rnd.randrange(32)}"
        request = Request(rnd.choice((1, 1, 1, 1, 2, 2, 2, 4, 4, 8)), tenant=tenant)
        got = index.place(request)
        if i % 20 == 19:  # the brute force scores all 768 servers: check every 20th decision
            assert got == place_bruteforce(index.servers(), request)
        index.reserve(got, tenant)
