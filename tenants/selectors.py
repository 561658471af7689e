"""Reads of tenants and leases, shaped for the steps, reconcilers, commands and pages that use them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, DateTimeField, DurationField, ExpressionWrapper, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, Greatest, Least
from django.utils import timezone

from console.models import AuditEvent
from tenants.models import ApiToken, Lease, Tenant
from tenants.states import LEASE_HOLDS_GPUS, LEASE_UNFINISHED, LeaseState, TenantState

L = LeaseState
_WITH_ALLOCATION = ("tenant", "allocation__server", "allocation__partition")


def lease_detail(lease_id: int) -> Lease:
    """One lease with its tenant, allocation, server and partition (one query)."""
    return Lease.objects.select_related(*_WITH_ALLOCATION).get(pk=lease_id)


def leases_recent(limit: int = 50) -> QuerySet[Lease]:
    """The newest leases with where they run, newest first."""
    return Lease.objects.select_related(*_WITH_ALLOCATION)[:limit]


def leases_with_pods() -> QuerySet[Lease]:
    """Leases whose pod should exist now (booting or running)."""
    return Lease.objects.filter(state__in=[L.BOOTING, L.RUNNING]).select_related("tenant")


def leases_ended_since(since: datetime) -> QuerySet[Lease]:
    """Leases that ended (released or failed) since `since` and had a pod."""
    return (Lease.objects.filter(Q(failed_at__gte=since) | Q(released_at__gte=since), state__in=[L.FAILED, L.RELEASED])
            .exclude(pod_name="").select_related("tenant"))


def tenants_to_onboard() -> QuerySet[Tenant]:
    """Tenants whose tenancy failed, or was never provisioned though they asked for a container
    (retried by the reconciler). An account without a container yet gets no tenancy."""
    return Tenant.objects.filter(
        Q(state=TenantState.FAILED) | Q(state=TenantState.PENDING, leases__isnull=False)
    ).distinct()


def tenancy_for_api(name: str) -> Tenant | None:
    """The tenant by name with `gpus_held` (GPUs its unfinished leases hold or wait for)."""
    return (Tenant.objects.filter(name=name)
            .annotate(gpus_held=Coalesce(Sum("leases__gpu_count", filter=Q(leases__state__in=LEASE_UNFINISHED)), 0))
            .first())


# ----------------------------------------------------------------------------- console: tenants pages
def month_start(now: datetime) -> datetime:
    """The first instant of `now`'s calendar month in the console's time zone (settings.TIME_ZONE)."""
    local = timezone.localtime(now)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _held_until(until: datetime):
    """When a lease stopped using its GPUs for its tenant: the release (asked by the tenant, or forced
    by a fault), else the failure, else the end; still held → `until`."""
    return Coalesce("releasing_at", "failed_at", "released_at", Value(until, output_field=DateTimeField()))


def gpu_hours_by_tenant(*, since: datetime, until: datetime, tenant_ids=None) -> dict[int, float]:
    """GPU-hours each tenant used in [since, until), in one query.

    A lease uses `gpu_count` GPUs from its placement (`placed_at`: its partition is reserved for it)
    until the tenant releases it or it fails (`releasing_at`, else `failed_at`, else `released_at`);
    a lease still holding GPUs counts up to `until`. Scrubbing and firmware levelling after the
    release are the provider's time and are not counted; a lease that never got GPUs counts nothing.
    Only the part inside the window counts: a 2-GPU lease placed on 31 January 22:00 and released
    on 1 February 02:00 uses 4 GPU-hours of January and 4 of February (see `lease_gpu_hours`).

    The database sums the clipped durations per (tenant, GPU count) and the few products are added
    here: multiplying a duration by an integer in the ORM is not portable between SQLite and
    PostgreSQL, and a tenant's leases come in only a handful of sizes.
    """
    window_start = Value(since, output_field=DateTimeField())
    used = Least(_held_until(until), Value(until, output_field=DateTimeField())) - Greatest("placed_at", window_start)
    leases = Lease.objects.filter(placed_at__isnull=False, placed_at__lt=until)
    if tenant_ids is not None:
        leases = leases.filter(tenant_id__in=list(tenant_ids))
    rows = (leases.annotate(held_until=_held_until(until)).filter(held_until__gt=since)
            .order_by().values("tenant_id", "gpu_count")
            .annotate(seconds=Sum(ExpressionWrapper(used, output_field=DurationField()))))
    hours: dict[int, float] = {}
    for row in rows:
        seconds = max(row["seconds"].total_seconds(), 0.0) if row["seconds"] is not None else 0.0
        hours[row["tenant_id"]] = hours.get(row["tenant_id"], 0.0) + row["gpu_count"] * seconds / 3600
    return hours


def lease_gpu_hours(lease: Lease, *, since: datetime, until: datetime) -> float:
    """The GPU-hours one lease used in [since, until), by the rule of `gpu_hours_by_tenant` (for a
    page's rows, from the lease's own fields: no query)."""
    if lease.placed_at is None:
        return 0.0
    end = lease.releasing_at or lease.failed_at or lease.released_at or until
    seconds = (min(end, until) - max(lease.placed_at, since)).total_seconds()
    return lease.gpu_count * max(seconds, 0.0) / 3600


def _use_by_tenant(tenant_ids=None) -> dict[int, dict]:
    """What each tenant holds now: `gpus_held` (GPUs of its leases that hold GPUs, including those being
    cleaned), `gpus_waiting` (of its pending leases; both count against the quota) and `leases_running`.
    One query over the unfinished leases only (the state index), grouped by tenant."""
    leases = Lease.objects.filter(state__in=LEASE_UNFINISHED)
    if tenant_ids is not None:
        leases = leases.filter(tenant_id__in=list(tenant_ids))
    rows = leases.order_by().values("tenant_id").annotate(
        gpus_held=Coalesce(Sum("gpu_count", filter=Q(state__in=LEASE_HOLDS_GPUS)), 0),
        gpus_waiting=Coalesce(Sum("gpu_count", filter=Q(state=L.PENDING)), 0),
        leases_running=Count("pk", filter=Q(state=L.RUNNING)),
    )
    return {row.pop("tenant_id"): row for row in rows}


_NO_USE = {"gpus_held": 0, "gpus_waiting": 0, "leases_running": 0}


def _with_use(tenants: list[Tenant], *, now: datetime, tenant_ids=None) -> list[Tenant]:
    """The tenants with their use now and `gpu_hours_month` (this calendar month up to `now`): two queries."""
    use = _use_by_tenant(tenant_ids)
    hours = gpu_hours_by_tenant(since=month_start(now), until=now, tenant_ids=tenant_ids)
    for tenant in tenants:
        for name, value in use.get(tenant.pk, _NO_USE).items():
            setattr(tenant, name, value)
        tenant.gpu_hours_month = hours.get(tenant.pk, 0.0)
    return tenants


TENANT_SORTS = {
    "name": (lambda t: t.name, False),
    "state": (lambda t: (t.state != TenantState.FAILED, t.state, t.name), False),
    "gpus": (lambda t: (t.gpus_held, t.name), True),
    "running": (lambda t: (t.leases_running, t.name), True),
    "hours": (lambda t: (t.gpu_hours_month, t.name), True),
}


def tenants_overview(*, now: datetime, sort: str = "name") -> list[Tenant]:
    """Every tenant with its onboarding state, GPUs held and waiting, quota, running leases and
    `gpu_hours_month` (this calendar month up to `now`): three queries whatever the number of tenants."""
    tenants = _with_use(list(Tenant.objects.all()), now=now)
    key, descending = TENANT_SORTS.get(sort, TENANT_SORTS["name"])
    return sorted(tenants, key=key, reverse=descending)


@dataclass(frozen=True)
class OnboardingStep:
    """One part of a tenancy as the console last recorded it (it does not ask the cluster on a page
    view): `status` is done, pending, missing, failed or deleting."""

    label: str
    status: str
    detail: str = ""


TENANCY_PARTS = ("namespace", "network policy", "tenancy")


def tenancy_onboarding(tenant: Tenant) -> list[OnboardingStep]:
    """The tenancy's namespace, network policy and Tenancy-ready, from the tenant's state and the
    reason `tenants.services` recorded (`tenancy_provision`, `tenancy_drifted`, `tenancy_failed`)."""
    reason, state = tenant.failure_reason, tenant.state
    labels = {"namespace": f"Namespace {tenant.namespace}", "network policy": "Network policy",
              "tenancy": "Tenancy ready"}

    def steps(status_of, detail_of) -> list[OnboardingStep]:
        return [OnboardingStep(labels[p], status_of(p), detail_of(p)) for p in TENANCY_PARTS]

    if state == TenantState.READY:
        since = f"since {timezone.localtime(tenant.ready_at):%Y-%m-%d %H:%M}" if tenant.ready_at else ""
        return steps(lambda p: "done", lambda p: since if p == "tenancy" else "")
    if state == TenantState.PENDING:
        why = ("queued: a worker provisions it" if getattr(tenant, "leases_total", 0)
               else "made on its first container")
        return steps(lambda p: "pending", lambda p: why)
    if state == TenantState.DELETING:
        return steps(lambda p: "deleting", lambda p: "being torn down")
    if state == TenantState.FAILED:  # the reconciler retries it; the parts were not confirmed
        return steps(lambda p: "failed" if p == "tenancy" else "pending",
                     lambda p: reason if p == "tenancy" else "not confirmed")
    # Provisioning: the first time, again after a transient error, or re-ensuring after drift.
    missing = _drift_missing(reason)
    if missing:
        return steps(lambda p: "missing" if p in missing else ("pending" if p == "tenancy" else "done"),
                     lambda p: "missing in the cluster: being re-created" if p in missing
                     else ("not ready until every part is back" if p == "tenancy" else ""))
    detail = reason if reason.startswith("retrying:") else "being provisioned"
    return steps(lambda p: "pending", lambda p: detail)


def _drift_missing(reason: str) -> set[str]:
    """The parts `tenancy_drifted` recorded missing ("re-ensuring: namespace, network policy missing …")."""
    prefix, _, rest = reason.partition(": ")
    if prefix != "re-ensuring" or " missing" not in rest:
        return set()
    return {part.strip() for part in rest.split(" missing", 1)[0].split(",")} & set(TENANCY_PARTS)


@dataclass
class TenantPage:
    """What the console's tenant page shows: the tenant with its use (as `tenants_overview`), the
    onboarding steps, its newest leases, tokens and history."""

    tenant: Tenant
    onboarding: list[OnboardingStep]
    leases: list[Lease]
    leases_total: int
    month_start: datetime
    tokens: list = field(default_factory=list)
    history: list = field(default_factory=list)


def tenant_page(name: str, *, now: datetime, lease_limit: int = 50, history: int = 15) -> TenantPage:
    """One tenant's page data in seven queries whatever its number of leases; Tenant.DoesNotExist when
    there is none. Each shown lease carries `gpu_hours_month`."""
    tenant = Tenant.objects.get(name=name)
    _with_use([tenant], now=now, tenant_ids=[tenant.pk])
    tenant.leases_total = tenant.leases.count()
    since = month_start(now)
    leases = list(tenant.leases.select_related("allocation__server", "allocation__partition")[:lease_limit])
    for lease in leases:
        lease.gpu_hours_month = lease_gpu_hours(lease, since=since, until=now)
    return TenantPage(
        tenant=tenant, onboarding=tenancy_onboarding(tenant), leases=leases, leases_total=tenant.leases_total,
        month_start=since, tokens=list(ApiToken.objects.filter(tenant=tenant)),
        history=list(AuditEvent.objects.filter(target_type=Tenant._meta.label_lower, target_id=str(tenant.pk))
                     [:history]),
    )
def booting_holders(server_ids: list[int] | None = None) -> dict[str, tuple[datetime | None, int]]:
    """Leases booting on these servers (default: all), by their allocation's holder: (when the boot
    began, how long it may take before it is overdue: the pod's start-up timeout from the recorded
    prediction). One query; the fleet map marks their GPUs "booting"."""
    from tenants.orchestration import boot_limits

    limits = boot_limits()
    rows = Lease.objects.filter(state=L.BOOTING, allocation__isnull=False)
    if server_ids is not None:
        rows = rows.filter(allocation__server_id__in=server_ids)
    return {
        holder: (since, limits.pod_timeout_s(predicted or limits.max_predicted_s))
        for holder, since, predicted in rows.annotate(predicted=Sum("boot_phases__predicted_seconds"))
        .values_list("allocation__holder", "booting_at", "predicted")
    }
