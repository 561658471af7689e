"""Thin Celery tasks for tenants and leases: take ids, call orchestration or a service, own retries.

Transient hardware errors (agent unavailable, cluster 5xx/409) retry with backoff; after the last
try the lease fails with the reason shown and its GPUs are quarantined.
"""

from __future__ import annotations

import logging

from celery import shared_task

from console.audit import Actor
from console.models import Source
from console.statemachine import InvalidTransition
from console.tasks_base import MAX_TRIES, backoff_seconds, is_transient
from fleet.cluster import get_cluster
from tenants import orchestration, services
from tenants.models import Lease

log = logging.getLogger(__name__)
TASK_ACTOR = Actor.system("lease-worker", source=Source.TASK)


def _retry_or_fail(task, exc: Exception, lease_id: int) -> str:
    if is_transient(exc) and task.request.retries < MAX_TRIES:
        raise task.retry(exc=exc, countdown=backoff_seconds(task.request.retries)) from exc
    lease = Lease.objects.get(pk=lease_id)
    log.warning("%s failed after %s tries: %s", lease, task.request.retries + 1, exc)
    services.lease_fail(lease=lease, actor=TASK_ACTOR, reason=f"{type(exc).__name__}: {exc}")
    return "failed"


@shared_task(bind=True, max_retries=MAX_TRIES, acks_late=True)
def lease_advance(self, lease_id: int) -> str:
    try:
        return orchestration.lease_step(lease_id=lease_id, actor=TASK_ACTOR)
    except InvalidTransition:
        # Someone moved the lease meanwhile (a release during activation): take the next step from there.
        return orchestration.lease_step(lease_id=lease_id, actor=TASK_ACTOR)
    except Exception as exc:
        return _retry_or_fail(self, exc, lease_id)


@shared_task(bind=True, max_retries=MAX_TRIES, acks_late=True)
def tenancy_provision(self, tenant_id: int) -> None:
    try:
        services.tenancy_provision(tenant_id=tenant_id, actor=TASK_ACTOR, cluster=get_cluster())
    except Exception as exc:
        if is_transient(exc) and self.request.retries < MAX_TRIES:
            raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries)) from exc
        services.tenancy_failed(tenant_id=tenant_id, actor=TASK_ACTOR, reason=str(exc))


@shared_task
def leases_place_pending(tenant_id: int | None = None) -> int:
    return services.leases_place_pending(actor=TASK_ACTOR, tenant_id=tenant_id)


@shared_task
def reconcile() -> dict:
    from tenants.reconciler import reconcile_leases

    return reconcile_leases()
