"""The REST API's lease representation, built from rows.

`tenants.api.serializers.LeaseSerializer` declares the shape (the OpenAPI component, checked by
schemathesis); this module fills it. Rows come from `.values()` (no model instances) and the nested
parts from one query each for the whole page, because the representation is on every lease request:
building it through model instances and nested serializers cost a page of 20 leases about three
times its queries (bench/api.py).

A lease's boot phases are written in the transaction that moves it to `booting` (its `booting_at`),
so a page whose leases never booted reads no phase rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from django.db.models import QuerySet
from django.utils import timezone

from fleet.models import AllocationGpu
from tenants.models import BootPhase, Lease, Tenant
from tenants.states import LEASE_TERMINAL, FailureReason, LeaseState, failure_code

LEASES_PATH, TENANCIES_PATH = "/api/v1/leases", "/api/v1/tenancies"  # tested against the URLconf
TIMESTAMPS = ("placed_at", "partitioning_at", "booting_at", "running_at", "releasing_at", "scrubbing_at",
              "leveling_at", "released_at", "failed_at")
CONDITION_KEYS = ("type", "status", "reason", "message", "last_transition_time")
_SERVER = ("allocation__server_id", "allocation__server__hostname", "allocation__server__rack",
           "allocation__server__platform")
_PARTITION = ("allocation__partition__partition_id", "allocation__partition__module_ids",
              "allocation__partition__size", "allocation__partition__nvlinks")
ROW_COLUMNS = (
    "id", "state", "tenant__name", "image", "gpu_count", "command", "args", "env", "max_pending_seconds",
    "conditions", "failure_reason", "pending_reason", "release_requested", "created_at", "allocation_id",
    *TIMESTAMPS, *_SERVER, *_PARTITION,
)


def lease_rows(leases: QuerySet[Lease]) -> QuerySet:
    """The rows `lease_documents` reads, as dicts (one query, joins to tenant, server and partition)."""
    return leases.values(*ROW_COLUMNS)


def leases_visible(*, tenant: Tenant | None = None, tenant_name: str | None = None) -> QuerySet[Lease]:
    """The leases a caller may see: a tenant's own, one tenancy's (operators), or all (operators)."""
    leases = Lease.objects.all()
    if tenant is not None:
        return leases.filter(tenant=tenant)
    if tenant_name is not None:
        return leases.filter(tenant__name=tenant_name)
    return leases


def lease_document(lease_id: int, *, tenant: Tenant | None = None) -> dict:
    """One lease as the API shows it; Lease.DoesNotExist when it is not the tenant's."""
    row = lease_rows(leases_visible(tenant=tenant).filter(pk=lease_id)).first()
    if row is None:
        raise Lease.DoesNotExist(f"no lease {lease_id}")
    return lease_documents([row])[0]


def lease_documents(rows: Iterable[dict]) -> list[dict]:
    """The representations of `rows` (from `lease_rows`), in their order: two more queries at most,
    the GPUs of the placed ones and the phases of the booted ones."""
    rows = list(rows)
    gpus = _gpus_by_allocation([r["allocation_id"] for r in rows if r["allocation_id"]])
    phases = _phases_by_lease([r["id"] for r in rows if r["booting_at"] is not None])
    return [_document(r, gpus.get(r["allocation_id"], []), phases.get(r["id"], [])) for r in rows]


def iso(value) -> str | None:
    """A time as DRF writes it (ISO 8601 in the current time zone, `Z` for UTC)."""
    if value is None:
        return None
    text = timezone.localtime(value).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _gpus_by_allocation(allocation_ids: list[int]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    if allocation_ids:
        rows = (AllocationGpu.objects.filter(allocation_id__in=allocation_ids).order_by("gpu__module_id")
                .values_list("allocation_id", "gpu__module_id", "gpu__uuid", "gpu__pci_address"))
        for allocation_id, module_id, uuid, pci_address in rows:
            out[allocation_id].append({"module_id": module_id, "uuid": uuid, "pci_address": pci_address})
    return out


def _phases_by_lease(lease_ids: list[int]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    if lease_ids:
        rows = (BootPhase.objects.filter(lease_id__in=lease_ids).order_by("lease_id", "seq")
                .values_list("lease_id", "phase", "started_at", "ended_at", "duration_s", "predicted_seconds",
                             "detail"))
        for lease_id, phase, started_at, ended_at, seconds, predicted, detail in rows:
            out[lease_id].append({"phase": phase, "started_at": iso(started_at), "ended_at": iso(ended_at),
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


def _document(row: dict, gpus: list[dict], phases: list[dict]) -> dict:
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
        "created_at": iso(row["created_at"]),
        "links": {"self": f"{LEASES_PATH}/{row['id']}", "tenancy": f"{TENANCIES_PATH}/{row['tenant__name']}"},
    }
    for name in TIMESTAMPS:
        doc[name] = iso(row[name])
    return doc
