"""The REST API's lease representation, built from rows.

`tenants.api.serializers.LeaseSerializer` declares the shape (the OpenAPI component, checked by
schemathesis); this module fills it. A page's rows come from one written-out statement
(`lease_page_rows`; `lease_rows` is the same read through the ORM's `.values()`), and the nested
parts from one query each for all the rows; one lease comes with its GPUs in one written-out
statement. The representation is on every lease request: building it through model instances and
nested serializers cost a page of 20 leases about three times its queries (bench/api.py).

A lease's boot phases are written in the transaction that moves it to `booting` (its `booting_at`),
so rows of leases that never booted read no phase rows.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable

from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from console.db import from_db, from_db_rows
from fleet.models import Allocation, AllocationGpu, Gpu, Partition, Server
from tenants.models import BootPhase, Lease, Tenant
from tenants.states import LEASE_TERMINAL, FailureReason, LeaseState, failure_code

LEASES_PATH, TENANCIES_PATH = "/api/v1/leases", "/api/v1/tenancies"  # tested against the URLconf
TIMESTAMPS = ("placed_at", "partitioning_at", "booting_at", "running_at", "releasing_at", "scrubbing_at",
              "leveling_at", "released_at", "failed_at")
CONDITION_KEYS = ("type", "status", "reason", "message", "last_transition_time")
# A row's columns: the key (as `.values()` names it), the column in the written-out statement, and
# its model field (how the ORM converts it: JSON, and times on SQLite).
_ROW = (
    *((name, f"l.{name}", Lease._meta.get_field(name)) for name in (
        "id", "state", "image", "gpu_count", "command", "args", "env", "max_pending_seconds", "conditions",
        "failure_reason", "pending_reason", "release_requested", "created_at", *TIMESTAMPS)),
    ("allocation_id", "l.allocation_id", Lease._meta.get_field("allocation")),
    ("tenant__name", "t.name", Tenant._meta.get_field("name")),
    ("allocation__server_id", "a.server_id", Allocation._meta.get_field("server")),
    *((f"allocation__server__{name}", f"s.{name}", Server._meta.get_field(name))
      for name in ("hostname", "rack", "platform")),
    *((f"allocation__partition__{name}", f"p.{name}", Partition._meta.get_field(name))
      for name in ("partition_id", "module_ids", "size", "nvlinks")),
)
ROW_COLUMNS = tuple(key for key, _, _ in _ROW)
_ROW_FIELDS = tuple(field for _, _, field in _ROW)


def lease_rows(*, tenant: Tenant | None = None, tenant_name: str | None = None) -> QuerySet:
    """The rows `lease_documents` reads, as dicts (one query, joins to tenant, server and partition),
    of the leases a caller may see: a tenant's own, one tenancy's (operators), or all (operators).
    Filter and order it as any queryset."""
    rows = _rows().all()  # a copy: the template itself is never evaluated
    if tenant is not None:
        return rows.filter(tenant=tenant)
    if tenant_name is not None:
        return rows.filter(tenant__name=tenant_name)
    return rows


@functools.cache
def _rows() -> QuerySet:
    # Resolving 31 columns over four joins took about half of building and compiling a page's query;
    # a copy of the resolved query costs half as much (measured in-process, PostgreSQL).
    return Lease.objects.values(*ROW_COLUMNS)


def lease_document(lease_id: int, *, tenant: Tenant | None = None) -> dict:
    """One lease as the API shows it; Lease.DoesNotExist when it is not the tenant's."""
    sql, params = _ONE_LEASE, [lease_id]
    if tenant is not None:
        sql, params = sql + " AND l.tenant_id = %s", [lease_id, tenant.pk]
    with connection.cursor() as cursor:
        cursor.execute(sql + " ORDER BY g.module_id", params)
        found = cursor.fetchall()
    if not found:
        raise Lease.DoesNotExist(f"no lease {lease_id}")
    # One row per GPU of the lease's partition (one with no GPU when it holds none).
    n = len(_ROW)
    row = _row(found[0][:n])
    gpus = [{"module_id": m, "uuid": u, "pci_address": p} for m, u, p in (r[n:] for r in found) if m is not None]
    zone = timezone.get_current_timezone()
    phases = _phases_by_lease([row["id"]], zone) if row["booting_at"] is not None else {}
    return _document(row, gpus, phases.get(row["id"], []), zone)


def lease_documents(rows: Iterable[dict]) -> list[dict]:
    """The representations of `rows` (from `lease_rows`), in their order: two more queries at most,
    the GPUs of the placed ones and the phases of the booted ones."""
    rows = list(rows)
    gpus = _gpus_by_allocation([r["allocation_id"] for r in rows if r["allocation_id"]])
    zone = timezone.get_current_timezone()  # once: each lookup reads a context-local
    phases = _phases_by_lease([r["id"] for r in rows if r["booting_at"] is not None], zone)
    return [_document(r, gpus.get(r["allocation_id"], []), phases.get(r["id"], []), zone) for r in rows]


def iso(value, zone=None) -> str | None:
    """A time as DRF writes it (ISO 8601 in the current time zone, or `zone`; `Z` for UTC)."""
    if value is None:
        return None
    text = value.astimezone(zone or timezone.get_current_timezone()).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


# The statements every lease request runs, written out: building them with the ORM cost more than
# running them (bench/api.py). tests/api/test_lease_documents.py checks they read what `.values()` does.
_COLUMNS = ", ".join(column for _, column, _ in _ROW)
_JOINS = (
    f" JOIN {Tenant._meta.db_table} t ON t.id = l.tenant_id"
    f" LEFT JOIN {Allocation._meta.db_table} a ON a.id = l.allocation_id"
    f" LEFT JOIN {Server._meta.db_table} s ON s.id = a.server_id"
    f" LEFT JOIN {Partition._meta.db_table} p ON p.id = a.partition_id"
)
_FROM = f" FROM {Lease._meta.db_table} l{_JOINS}"
# One lease with its GPUs in the same statement (a row per GPU): every create, get and delete
# answers with one lease, and its GPUs in a second statement cost each of them a round trip more.
_ONE_LEASE = (
    f"SELECT {_COLUMNS}, g.module_id, g.uuid, g.pci_address{_FROM}"
    f" LEFT JOIN {AllocationGpu._meta.db_table} ag ON ag.allocation_id = l.allocation_id"
    f" LEFT JOIN {Gpu._meta.db_table} g ON g.id = ag.gpu_id"
    " WHERE l.id = %s"
)
_GPUS = (
    f"SELECT ag.allocation_id, g.module_id, g.uuid, g.pci_address FROM {AllocationGpu._meta.db_table} ag"
    f" JOIN {Gpu._meta.db_table} g ON g.id = ag.gpu_id WHERE ag.allocation_id IN (%s) ORDER BY g.module_id"
)
# PostgreSQL's planner priced a page's few dozen GPU lookups above hashing the whole GPU table and
# chose the hash: 1.7 ms a page on 6,144 GPUs, growing with the fleet. The lateral subquery reads
# each GPU by its key (OFFSET 0 keeps the planner from flattening it back into that join); one
# statement text for any page, so it stays prepared.
_GPUS_POSTGRESQL = (
    f"SELECT ag.allocation_id, g.module_id, g.uuid, g.pci_address FROM {AllocationGpu._meta.db_table} ag"
    f" CROSS JOIN LATERAL (SELECT module_id, uuid, pci_address FROM {Gpu._meta.db_table}"
    " WHERE id = ag.gpu_id OFFSET 0) g WHERE ag.allocation_id = ANY(%s) ORDER BY g.module_id"
)


def _row(values: tuple) -> dict:
    """A row of _ONE_LEASE as `.values()` would give it."""
    return dict(zip(ROW_COLUMNS, from_db(_ROW_FIELDS, values), strict=True))


def lease_page_rows(*, tenant: Tenant | None = None, tenant_name: str | None = None) -> LeaseRowsStatement:
    """`lease_rows` for the API's list, as one written-out statement (LeaseRowsStatement)."""
    rows = LeaseRowsStatement()
    if tenant is not None:
        return rows.filter(tenant_id=tenant.pk)
    if tenant_name is not None:
        return rows.filter(tenant__name=tenant_name)
    return rows


class LeaseRowsStatement:
    """The rows `lease_rows` reads, filtered, ordered by id and sliced in one written-out statement.

    A page is read on every list request, and the ORM spent longer compiling its 31-column, four-join
    query than the database did answering it (py-spy on bench/api.py's web workers). It answers what
    DRF's CursorPagination asks of a queryset (`order_by("-id")`, `filter(id__lt=…)`, one slice) and
    the list's filters; any other lookup is a TypeError, not a silently wider page.
    tests/api/test_lease_documents.py checks it reads what `lease_rows` does.
    """

    _LOOKUPS = {"id__lt": "l.id < %s", "id__gt": "l.id > %s", "tenant_id": "l.tenant_id = %s",
                "tenant__name": "t.name = %s", "created_at__gte": "l.created_at >= %s",
                "created_at__lt": "l.created_at < %s"}

    def __init__(self, where: tuple[str, ...] = (), params: tuple = (), order: str = "-id"):
        self._where, self._params, self._order = where, params, order

    def filter(self, **lookups) -> LeaseRowsStatement:
        where, params = list(self._where), list(self._params)
        for lookup, value in lookups.items():
            if lookup == "state__in":
                values = list(value)
                where.append(f"l.state IN ({', '.join(['%s'] * len(values))})" if values else "1 = 0")
                params.extend(values)
            elif lookup in self._LOOKUPS:
                where.append(self._LOOKUPS[lookup])
                if lookup.startswith("created_at"):
                    value = connection.ops.adapt_datetimefield_value(value)
                params.append(value)
            else:
                raise TypeError(f"LeaseRowsStatement cannot filter by {lookup}")
        return LeaseRowsStatement(tuple(where), tuple(params), self._order)

    def order_by(self, *fields: str) -> LeaseRowsStatement:
        if fields not in (("id",), ("-id",)):
            raise TypeError(f"LeaseRowsStatement orders by id only, not {fields}")
        return LeaseRowsStatement(self._where, self._params, fields[0])

    def sql(self, start: int, stop: int) -> tuple[str, list]:
        """The statement reading rows [start, stop), and its parameters.

        The page's leases are picked first, in a subquery of their own (a LIMIT inside is never
        flattened into the joins), and only they are joined: planned from stale statistics (a
        tenant's leases counted as one row) PostgreSQL joined all of a tenant's leases to their
        allocations, servers and partitions and then kept 21 of them, 3.3 ms for 130 leases and
        growing with the tenant's history."""
        order = f"l.id {'DESC' if self._order == '-id' else 'ASC'}"
        tenant_join = f" JOIN {Tenant._meta.db_table} t ON t.id = l.tenant_id" \
            if any(clause.startswith("t.") for clause in self._where) else ""
        page = (f"SELECT l.* FROM {Lease._meta.db_table} l{tenant_join}"
                + (f" WHERE {' AND '.join(self._where)}" if self._where else "")
                + f" ORDER BY {order} LIMIT %s OFFSET %s")
        sql = f"SELECT {_COLUMNS} FROM ({page}) l{_JOINS} ORDER BY {order}"
        return sql, [*self._params, max(0, stop - start), start]

    def __getitem__(self, window: slice) -> list[dict]:
        if not isinstance(window, slice) or window.step is not None or window.stop is None:
            raise TypeError("LeaseRowsStatement reads one slice with an end")
        with connection.cursor() as cursor:
            cursor.execute(*self.sql(window.start or 0, window.stop))
            found = cursor.fetchall()
        return [dict(zip(ROW_COLUMNS, values, strict=True)) for values in from_db_rows(_ROW_FIELDS, found)]


def _gpus_by_allocation(allocation_ids: list[int]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    if allocation_ids:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(_GPUS_POSTGRESQL, [allocation_ids])
            else:
                cursor.execute(_GPUS % ", ".join(["%s"] * len(allocation_ids)), allocation_ids)
            for allocation_id, module_id, uuid, pci_address in cursor.fetchall():
                out[allocation_id].append({"module_id": module_id, "uuid": uuid, "pci_address": pci_address})
    return out


def _phases_by_lease(lease_ids: list[int], zone) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    if lease_ids:
        rows = (BootPhase.objects.filter(lease_id__in=lease_ids).order_by("lease_id", "seq")
                .values_list("lease_id", "phase", "started_at", "ended_at", "duration_s", "predicted_seconds",
                             "detail"))
        for lease_id, phase, started_at, ended_at, seconds, predicted, detail in rows:
            out[lease_id].append({"phase": phase, "started_at": iso(started_at, zone), "ended_at": iso(ended_at, zone),
                                  "seconds": seconds, "predicted_seconds": predicted, "detail": detail})
    return out


def _failure_reason(row: dict) -> str | None:
    """The machine-readable reason: the failure's code, or InsufficientCapacity for a lease waiting
    for room (not an error: it stays pending)."""
    if row["failure_reason"]:
        return failure_code(row["failure_reason"])
    if row["state"] == LeaseState.PENDING:
        scheduled = next((c for c in row["conditions"] if c.get("type") == "Scheduled"), None)
        if scheduled and scheduled.get("reason") == FailureReason.INSUFFICIENT_CAPACITY:
            return FailureReason.INSUFFICIENT_CAPACITY.value
    return None


def _document(row: dict, gpus: list[dict], phases: list[dict], zone) -> dict:
    placed = row["allocation_id"] is not None
    doc = {
        "id": row["id"],
        "state": row["state"],
        "terminal": row["state"] in LEASE_TERMINAL,
        "tenancy": row["tenant__name"],
        "container-url": row["image"],
        "gpus": row["gpu_count"],
        "command": row["command"],
        "args": row["args"],
        "env": row["env"],
        "max_pending_seconds": row["max_pending_seconds"],
        "conditions": [{k: c.get(k) for k in CONDITION_KEYS} for c in row["conditions"]],
        "failure_reason": _failure_reason(row),
        "failure_message": row["failure_reason"],
        "pending_reason": row["pending_reason"],
        "server": {"id": row["allocation__server_id"], "hostname": row["allocation__server__hostname"],
                   "rack": row["allocation__server__rack"], "platform": row["allocation__server__platform"]}
        if placed else None,
        "partition": {"id": row["allocation__partition__partition_id"],
                      "module_ids": list(row["allocation__partition__module_ids"]),
                      "size": row["allocation__partition__size"], "nvlinks": row["allocation__partition__nvlinks"]}
        if placed else None,
        "gpu_devices": gpus,
        "boot_phases": phases,
        "release_requested": row["release_requested"],
        "created_at": iso(row["created_at"], zone),
        "links": {"self": f"{LEASES_PATH}/{row['id']}", "tenancy": f"{TENANCIES_PATH}/{row['tenant__name']}"},
    }
    for name in TIMESTAMPS:
        doc[name] = iso(row[name], zone)
    return doc
