"""Tenants' periodic reconciler: tenancies, pods and leases (fleet's reconciler owns partitions,
device-plugin books, GPUs and allocations). Compares desired state (database) with the cluster's
and repairs the difference, so a lost task or a crashed worker never leaves a lease stuck. Runs as
a singleton (named lock); every repair is a service call, audited with source `reconciler`.
Level-based: running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from console import dispatch
from console.audit import Actor
from console.locks import try_lock
from console.models import Source
from fleet.cluster import get_cluster
from hardware.cluster import PodPhase
from hardware.exceptions import HardwareError
from tenants import selectors, services
from tenants.idempotency import idempotency_keys_purge
from tenants.models import Lease, Tenant
from tenants.states import LEASE_HOLDS_GPUS, FailureReason, LeaseState, TenantState

log = logging.getLogger(__name__)
ACTOR = Actor.system("reconciler", source=Source.RECONCILER)
L = LeaseState
ORPHAN_POD_WINDOW = timedelta(hours=1)


def reconcile_leases(*, stuck_after: timedelta | None = None) -> dict:
    """One pass over tenancies, pods and leases. Returns counts of what it repaired. `stuck_after`:
    how long a step may take before it is resumed (default settings.RECONCILE_STUCK_AFTER_S)."""
    with try_lock("tenants-reconciler") as held:
        if not held:
            return {"skipped": 1}
        stats: Counter[str] = Counter()
        if stuck_after is None:
            stuck_after = timedelta(seconds=settings.RECONCILE_STUCK_AFTER_S)
        _pods(stats)
        _stuck_leases(stats, stuck_after)
        _tenancies(stats)
        stats["leases_timed_out"] += services.lease_cancel_overdue(actor=ACTOR)
        idempotency_keys_purge()
        stats["leases_placed"] += services.leases_place_pending(actor=ACTOR)
        return dict(stats)


def _pods(stats: Counter) -> None:
    cluster = get_cluster()
    for lease in selectors.leases_with_pods():
        try:
            pod = cluster.get_lease_pod(lease_id=str(lease.pk), tenant=lease.tenant.name)
        except HardwareError as exc:
            log.warning("cannot read pod of %s: %s", lease, exc)
            continue
        if pod is None or pod.phase in PodPhase.TERMINAL:
            services.lease_release(lease=lease, actor=ACTOR, failure_reason=pod_failure_reason(pod))
            stats["pods_ended"] += 1
    # A lease that ended without its clean-up (failed, or a crash) may have left its pod and VM behind;
    # the GPUs cannot be scrubbed under a running VM.
    recent = timezone.now() - ORPHAN_POD_WINDOW
    for lease in selectors.leases_ended_since(recent):
        try:
            if cluster.get_lease_pod(lease_id=str(lease.pk), tenant=lease.tenant.name) is not None:
                cluster.delete_lease_pod(lease_id=str(lease.pk), tenant=lease.tenant.name)
                stats["orphan_pods_deleted"] += 1
        except HardwareError as exc:
            log.warning("cannot clean up the pod of %s: %s", lease, exc)


def pod_failure_reason(pod) -> str:
    """Why an ended pod failed the lease, `Code: detail` (the API's failure_reason), or "" when it did
    not: only an image that could not be pulled fails it; a container's own exit ends it normally."""
    if pod is None or pod.phase != PodPhase.FAILED:
        return ""
    if any(word in pod.reason.lower() for word in ("imagepull", "errimage", "invalidimagename")):
        return f"{FailureReason.IMAGE_PULL_FAILED}: {pod.reason}"
    return ""


def _stuck_leases(stats: Counter, stuck_after: timedelta) -> None:
    cutoff = timezone.now() - stuck_after
    stale = Q()
    for state in LEASE_HOLDS_GPUS:
        stale |= Q(state=state, **{f"{state}_at__lt": cutoff})
    # Booting and running leases wait on the outside (the node watcher follows boots; pods end).
    for lease_id in Lease.objects.filter(stale).exclude(state__in=[L.BOOTING, L.RUNNING]).values_list("pk", flat=True):
        dispatch.enqueue("lease_advance", lease_id)
        stats["leases_resumed"] += 1


def _tenancies(stats: Counter) -> None:
    for tenant_id in selectors.tenants_to_onboard().values_list("pk", flat=True):
        dispatch.enqueue("tenancy_provision", tenant_id)
        stats["tenancies_retried"] += 1
    # A ready tenancy whose namespace, policy or Tenancy went missing is not ready: provisioned again.
    cluster = get_cluster()
    for tenant in Tenant.objects.filter(state=TenantState.READY):
        try:
            missing = cluster.tenancy_drift(tenant.name)
        except HardwareError as exc:
            log.warning("cannot read the tenancy of %s: %s", tenant, exc)
            continue
        if missing:
            services.tenancy_drifted(tenant=tenant, actor=ACTOR, missing=missing)
            stats["tenancies_reensured"] += 1
