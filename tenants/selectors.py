"""Reads of tenants and leases, shaped for the steps, reconcilers, commands and pages that use them."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Prefetch, Q, QuerySet, Sum
from django.db.models.functions import Coalesce

from fleet.models import AllocationGpu
from tenants.models import Lease, Tenant
from tenants.states import LEASE_UNFINISHED, LeaseState, TenantState

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


# The columns the API's representation reads of the related rows: compiling a query costs per column,
# and the server and GPU rows are wide (bench/api.py: about a third of a GET's time was the SQL compiler).
_API_RELATED_COLUMNS = (
    "tenant__name", "allocation__server_id", "allocation__partition_id",
    "allocation__server__hostname", "allocation__server__rack", "allocation__server__platform",
    "allocation__partition__partition_id", "allocation__partition__module_ids", "allocation__partition__size",
    "allocation__partition__nvlinks",
)
_API_GPU_COLUMNS = ("allocation_id", "gpu__module_id", "gpu__uuid", "gpu__pci_address")


def _leases_for_api():
    own = [f.attname for f in Lease._meta.concrete_fields]
    return Lease.objects.select_related(*_WITH_ALLOCATION).only(*own, *_API_RELATED_COLUMNS).prefetch_related(
        Prefetch("allocation__allocation_gpus",
                 queryset=AllocationGpu.objects.select_related("gpu").only(*_API_GPU_COLUMNS)),
        "boot_phases",
    )


def leases_for_api_list(*, tenant: Tenant | None = None, tenant_name: str | None = None) -> QuerySet[Lease]:
    """Leases as the API lists them (a tenant's own, or all for operators), with everything the
    representation reads in a fixed number of queries."""
    leases = _leases_for_api()
    if tenant is not None:
        leases = leases.filter(tenant=tenant)
    elif tenant_name is not None:
        leases = leases.filter(tenant__name=tenant_name)
    return leases


def lease_for_api(lease_id: int, *, tenant: Tenant | None = None) -> Lease:
    """One lease as the API shows it; Lease.DoesNotExist when it is not the tenant's."""
    leases = _leases_for_api()
    if tenant is not None:
        leases = leases.filter(tenant=tenant)
    return leases.get(pk=lease_id)


def lease_exists_for_api(lease_id: int, *, tenant: Tenant | None = None) -> bool:
    """Whether the caller may act on the lease (the tenant's own, or any for operators): one narrow query,
    for the writes that reload the lease themselves."""
    leases = Lease.objects.filter(pk=lease_id)
    if tenant is not None:
        leases = leases.filter(tenant=tenant)
    return leases.exists()


def tenancy_for_api(name: str) -> Tenant | None:
    """The tenant by name with `gpus_held` (GPUs its unfinished leases hold or wait for)."""
    return (Tenant.objects.filter(name=name)
            .annotate(gpus_held=Coalesce(Sum("leases__gpu_count", filter=Q(leases__state__in=LEASE_UNFINISHED)), 0))
            .first())
