"""Thin Celery tasks for fleet work: take ids, call a service, own their retries."""

from __future__ import annotations

from celery import shared_task

from console.audit import Actor
from console.models import Source
from console.operations import operation_finish
from console.tasks_base import MAX_TRIES, backoff_seconds, is_transient
from fleet import allocations, cleaning, services
from fleet.cluster import get_cluster
from fleet.lease_book import lease_book_push as push_book
from fleet.models import Allocation, Gpu, Server

TASK_ACTOR = Actor.system("fleet-worker", source=Source.TASK)


@shared_task(bind=True, max_retries=MAX_TRIES, acks_late=True)
def gpu_clean(self, gpu_id: int, operation_id: int | None = None) -> str:
    try:
        return cleaning.gpu_clean(gpu_id=gpu_id, actor=TASK_ACTOR, operation_id=operation_id)
    except Exception as exc:
        if is_transient(exc) and self.request.retries < MAX_TRIES:
            raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries)) from exc
        gpu = Gpu.objects.get(pk=gpu_id)
        services.gpu_quarantine(gpu=gpu, actor=TASK_ACTOR, reason=f"cleaning failed: {exc}")
        gpu.refresh_from_db()
        operation_finish(operation_id, ok=False, line=str(exc))
        allocation = allocations.open_allocation_of(gpu)
        if allocation is not None:
            allocations.allocation_return_if_clean(allocation=allocation, actor=TASK_ACTOR)
        return gpu.state


@shared_task(bind=True, max_retries=MAX_TRIES, acks_late=True)
def allocation_release(self, allocation_id: int) -> str:
    try:
        return allocations.allocation_release(
            allocation=Allocation.objects.get(pk=allocation_id), actor=TASK_ACTOR
        ).state
    except Exception as exc:
        if is_transient(exc) and self.request.retries < MAX_TRIES:
            raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries)) from exc
        raise


@shared_task(bind=True, max_retries=MAX_TRIES, acks_late=True)
def lease_book_push(self, server_id: int) -> None:
    try:
        push_book(server=Server.objects.get(pk=server_id))
    except Exception as exc:
        if is_transient(exc) and self.request.retries < MAX_TRIES:
            raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries)) from exc
        raise


@shared_task(bind=True, max_retries=MAX_TRIES, acks_late=True)
def node_set_schedulable(self, server_id: int, schedulable: bool) -> None:
    """Cordon or uncordon the server's Kubernetes node to match the server's state."""
    server = Server.objects.get(pk=server_id)
    cluster = get_cluster()
    try:
        (cluster.uncordon if schedulable else cluster.cordon)(server.k8s_node_name)
    except Exception as exc:
        if is_transient(exc):
            raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries)) from exc
        raise


@shared_task
def reconcile() -> dict:
    from fleet.reconciler import reconcile_fleet

    return reconcile_fleet()
