"""On PostgreSQL the request path's statements stay prepared per connection (settings'
DATABASE_PREPARED), keep working when a migration adds a column under a running server, and a
tenant's lease page is read off its index however many leases the tenant keeps."""

import pytest
from django.db import DatabaseError, connection, transaction

from tenants import services
from tenants.lease_documents import lease_page_rows
from tenants.models import Lease, Tenant
from tests.factories import LeaseFactory, TenantFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def _prepared(fragment: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s", [f"%{fragment}%"])
        return [row[0] for row in cursor.fetchall()]


@pytest.fixture
def migrate_meanwhile():
    """Adds a column to a table from another connection, as a migration run beside a live server
    does; the columns are dropped after the test."""
    import psycopg

    settings = connection.settings_dict
    other = psycopg.connect(dbname=settings["NAME"], user=settings["USER"], host=settings["HOST"],
                            port=settings["PORT"] or 5432, password=settings["PASSWORD"] or None, autocommit=True)
    added = []

    def add_column(table: str) -> None:
        other.execute(f"ALTER TABLE {table} ADD COLUMN added_by_a_later_release integer")
        added.append(table)

    yield add_column
    for table in added:
        other.execute(f"ALTER TABLE {table} DROP COLUMN added_by_a_later_release")
    other.close()


def test_a_statement_run_often_is_prepared_once_per_connection():
    lease = LeaseFactory()
    for _ in range(6):  # psycopg prepares a statement on its sixth run (prepare_threshold 5)
        services._lease_locked(lease.pk, lease.tenant)
    assert len(_prepared(f"FROM {Lease._meta.db_table} WHERE id = $1")) == 1


@pytest.mark.django_db(transaction=True)
def test_the_locked_reads_keep_working_after_a_migration_adds_a_column(migrate_meanwhile):
    lease = LeaseFactory()
    for _ in range(6):
        with transaction.atomic():
            services._lease_locked(lease.pk, lease.tenant)
            services._tenant_for_request(lease.tenant.name)
    page = lease_page_rows(tenant=lease.tenant).order_by("-id")  # its subquery reads `l.*`
    for _ in range(6):
        assert [row["id"] for row in page[0:21]] == [lease.pk]
    assert _prepared(f"(SELECT l.* FROM {Lease._meta.db_table} l WHERE")
    migrate_meanwhile(Lease._meta.db_table)
    migrate_meanwhile(Tenant._meta.db_table)
    with transaction.atomic():
        assert services._lease_locked(lease.pk, lease.tenant).pk == lease.pk
        assert services._tenant_for_request(lease.tenant.name).pk == lease.tenant.pk
    assert [row["id"] for row in page[0:21]] == [lease.pk]  # the page's columns are named: same result type


@pytest.mark.django_db(transaction=True)
def test_a_prepared_select_star_would_have_failed_there(migrate_meanwhile):
    """The check above can fail: a prepared `SELECT *` is refused once the table has another column."""
    lease = LeaseFactory()
    star = f"SELECT * FROM {Lease._meta.db_table} WHERE id = %s"
    for _ in range(6):
        with transaction.atomic():
            list(Lease.objects.raw(star, [lease.pk]))
    migrate_meanwhile(Lease._meta.db_table)
    with pytest.raises(DatabaseError, match="cached plan must not change result type"), transaction.atomic():
        list(Lease.objects.raw(star, [lease.pk]))


def _page_plan(statement) -> tuple[str, list[str]]:
    """The page statement's plan, and the lines of its Limit's subtree (what runs before the page is cut)."""
    sql, params = statement.sql(0, 21)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        lines = [row[0] for row in cursor.fetchall()]
    start = next(i for i, line in enumerate(lines) if line.lstrip(" ->").startswith("Limit"))
    below = []
    for line in lines[start + 1:]:
        if len(line) - len(line.lstrip()) <= len(lines[start]) - len(lines[start].lstrip()):
            break
        below.append(line)
    return "\n".join(lines), below


def test_a_tenant_s_page_reads_its_newest_rows_off_the_index():
    """Without the (tenant, -id) index PostgreSQL joined and sorted every lease of the tenant for each
    page of 20. One tenant among forty: the planner reckons a tenant's rows spread evenly, and with a
    handful of tenants it may rather walk the primary key backwards, reading past every newer lease of
    the others (their leases here are all newer)."""
    busy, others = TenantFactory(), [TenantFactory() for _ in range(40)]
    Lease.objects.bulk_create([LeaseFactory.build(tenant=busy) for _ in range(300)])
    Lease.objects.bulk_create([LeaseFactory.build(tenant=t) for t in others for _ in range(250)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    statement = lease_page_rows(tenant=busy).order_by("-id").filter(id__lt=10**12)
    plan, below_limit = _page_plan(statement)
    assert "lease_tenant_newest_first" in "\n".join(below_limit), plan
    assert not any("Sort" in line for line in below_limit), plan  # only the page's 21 rows are sorted
    assert len(statement[0:21]) == 21


def test_a_page_joins_only_its_own_rows_however_stale_the_statistics():
    """Planned from statistics taken before the tenant had leases (each table counted as a row or
    none), the page's statement joined every lease of the tenant to its allocation, server and
    partition and only then cut the page: 3.3 ms for 130 leases, growing with the tenant's history.
    The page is picked in a subquery of its own, so only its rows are joined whatever the plan."""
    busy = TenantFactory()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    Lease.objects.bulk_create([LeaseFactory.build(tenant=busy) for _ in range(300)])
    for statement in (lease_page_rows(tenant=busy).order_by("-id"),
                      lease_page_rows(tenant_name=busy.name).order_by("-id").filter(state__in=["pending"])):
        plan, below_limit = _page_plan(statement)
        assert any("tenants_lease" in line for line in below_limit), plan
        assert not any(table in line for line in below_limit
                       for table in ("fleet_allocation", "fleet_server", "fleet_partition")), plan
    assert [row["id"] for row in lease_page_rows(tenant=busy).order_by("-id")[0:21]] == \
        list(Lease.objects.filter(tenant=busy).order_by("-id").values_list("id", flat=True)[:21])
