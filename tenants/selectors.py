"""Reads of tenants and leases, shaped for the steps, reconcilers, commands and pages that use them."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q, QuerySet

from tenants.models import Lease, Tenant
from tenants.states import LeaseState, TenantState

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
    """Tenants whose tenancy is not provisioned yet or failed (retried by the reconciler)."""
    return Tenant.objects.filter(state__in=[TenantState.PENDING, TenantState.FAILED])
