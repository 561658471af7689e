"""GPU-hours a tenant used in a window (the tenants' pages): GPUs × time from placement to release or
failure, clipped to the window, so a lease over a month's boundary counts its part in each month."""

from datetime import UTC, datetime, timedelta

import pytest

from tenants.selectors import gpu_hours_by_tenant, lease_gpu_hours, month_start
from tenants.states import LeaseState as L
from tests.factories import LeaseFactory, TenantFactory

pytestmark = pytest.mark.django_db


def at(month, day, hour=0, minute=0):
    return datetime(2025, month, day, hour, minute, tzinfo=UTC)


NOW = at(3, 10, 12)
MARCH, FEBRUARY = at(3, 1), at(2, 1)
# (name, GPUs, state, placed_at, releasing_at, failed_at, released_at, GPU-hours in March up to NOW, in February)
CASES = [
    ("over the month boundary", 2, L.RELEASED, at(2, 28, 22), at(3, 1, 2), None, at(3, 1, 3), 4, 4),
    ("running since this morning", 1, L.RUNNING, at(3, 10, 10), None, None, None, 2, 0),
    ("failed while booting", 8, L.FAILED, at(3, 5), None, at(3, 5, 1, 30), None, 12, 0),
    ("all in February", 4, L.RELEASED, at(2, 1), at(2, 20), None, at(2, 20, 1), 0, 4 * 19 * 24),
    ("never placed", 2, L.FAILED, None, None, at(3, 2), None, 0, 0),
    ("running since February", 1, L.RUNNING, at(2, 15), None, None, None, 9 * 24 + 12, 14 * 24),
    ("released, being scrubbed", 2, L.SCRUBBING, at(3, 9), at(3, 9, 6), None, None, 12, 0),
    ("released after a fault, then failed", 4, L.FAILED, at(3, 3), at(3, 3, 1), at(3, 3, 5), None, 4, 0),
]


@pytest.fixture
def leases():
    tenant = TenantFactory()
    rows = []
    for name, gpus, state, placed, releasing, failed, released, *_ in CASES:
        rows.append(LeaseFactory(tenant=tenant, gpu_count=gpus, state=state, placed_at=placed,
                                 releasing_at=releasing, failed_at=failed, released_at=released, image=name))
    other = LeaseFactory(gpu_count=8, state=L.RUNNING, placed_at=at(3, 1))  # another tenant's
    return tenant, rows, other


def test_each_lease_counts_its_gpus_times_its_held_time_inside_the_window(leases):
    _, rows, _ = leases
    for lease, case in zip(rows, CASES, strict=True):
        assert lease_gpu_hours(lease, since=MARCH, until=NOW) == pytest.approx(case[7]), case[0]
        assert lease_gpu_hours(lease, since=FEBRUARY, until=MARCH) == pytest.approx(case[8]), case[0]


def test_the_database_sum_is_the_sum_of_the_leases(leases, django_assert_num_queries):
    tenant, _, other = leases
    with django_assert_num_queries(1):
        march = gpu_hours_by_tenant(since=MARCH, until=NOW)
    assert march[tenant.pk] == pytest.approx(sum(c[7] for c in CASES))
    assert march[other.tenant_id] == pytest.approx(8 * (9 * 24 + 12))
    february = gpu_hours_by_tenant(since=FEBRUARY, until=MARCH, tenant_ids=[tenant.pk])
    assert february == {tenant.pk: pytest.approx(sum(c[8] for c in CASES))}


def test_the_month_starts_at_midnight_on_the_first_in_the_console_time_zone():
    assert month_start(at(3, 10, 12)) == MARCH
    assert month_start(at(3, 1, 0, 0)) == MARCH
    assert month_start(at(2, 28, 23, 59) + timedelta(seconds=59)) == FEBRUARY
