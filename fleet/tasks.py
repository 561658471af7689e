"""Thin Celery tasks for fleet work: take ids, call a service, own their retries."""

from __future__ import annotations

from celery import shared_task

from console.audit import Actor
from console.models import Source
from console.operations import operation_finish
from console.tasks_base import MAX_TRIES, backoff_seconds, is_transient
from fleet import services
from fleet.cluster import get_cluster
from fleet.models import Gpu, Server

TASK_ACTOR = Actor.system("fleet-worker", source=Source.TASK)


@shared_task(bind=True, max_retries=MAX_TRIES, acks_late=True)
def gpu_clean(self, gpu_id: int, operation_id: int | None = None) -> str:
    try:
        return services.gpu_clean(gpu_id=gpu_id, actor=TASK_ACTOR, operation_id=operation_id)
    except Exception as exc:
        if is_transient(exc) and self.request.retries < MAX_TRIES:
            raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries)) from exc
        gpu = Gpu.objects.get(pk=gpu_id)
        services.gpu_quarantine(gpu=gpu, actor=TASK_ACTOR, reason=f"cleaning failed: {exc}")
        operation_finish(operation_id, ok=False, line=str(exc))
        return gpu.state


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
