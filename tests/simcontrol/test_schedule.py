"""The generator's schedule is a pure function of seed and parameters."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest

from simcontrol.schedule import Params, arrivals, parse_sizes, schedule

PARAMS = Params(rate_per_min=4.0, sizes=((1, 4.0), (2, 3.0), (4, 2.0), (8, 1.0)), lifetime_min_s=60,
                lifetime_max_s=300, tenants=3)


def test_same_seed_same_requests_other_seed_other_requests():
    first = schedule(7, PARAMS, 200)
    assert first == schedule(7, PARAMS, 200)
    assert first != schedule(8, PARAMS, 200)
    assert [a.index for a in first] == list(range(200))
    assert all(b.at_s > a.at_s for a, b in pairwise(first))


def test_resuming_from_the_cursor_gives_the_same_tail():
    """What the generator does after a restart: from arrival k with arrival k-1's time."""
    full = schedule(3, PARAMS, 50)
    it = arrivals(3, PARAMS, start_index=20, last_at_s=full[19].at_s)
    assert [next(it) for _ in range(30)] == full[20:]


def test_draws_follow_the_parameters():
    arrivals_ = schedule(1, PARAMS, 4000)
    minutes = arrivals_[-1].at_s / 60
    assert 3.7 < len(arrivals_) / minutes < 4.3
    sizes = Counter(a.gpu_count for a in arrivals_)
    assert set(sizes) == {1, 2, 4, 8}
    assert sizes[1] > sizes[2] > sizes[4] > sizes[8]
    assert {a.tenant for a in arrivals_} == {1, 2, 3}
    assert all(60 <= a.lifetime_s <= 300 for a in arrivals_)


def test_a_changed_parameter_changes_the_schedule():
    other = Params(**{**PARAMS.__dict__, "sizes": ((8, 1.0),)})
    assert {a.gpu_count for a in schedule(7, other, 50)} == {8}


@pytest.mark.parametrize("change, field", [
    ({"rate_per_min": 0}, "rate_per_min"),
    ({"sizes": ((3, 1.0),)}, "sizes"),
    ({"sizes": ((1, 0.0),)}, "sizes"),
    ({"lifetime_min_s": 400}, "lifetime"),
    ({"tenants": 0}, "tenants"),
])
def test_bad_parameters_are_named(change, field):
    assert field in Params(**{**PARAMS.__dict__, **change}).errors()
    assert PARAMS.errors() == {}


def test_size_mix_parsing():
    assert parse_sizes("1:4, 2:3,4:2 ,8") == ((1, 4.0), (2, 3.0), (4, 2.0), (8, 1.0))
    with pytest.raises(ValueError, match="GPUs:weight"):
        parse_sizes("one:4")
