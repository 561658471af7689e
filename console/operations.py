"""Long operator actions as `Operation` rows the UI polls. Infrastructure: imports no app."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from console.audit import Actor, target_key
from console.models import Operation


def operation_start(*, kind: str, target: models.Model, actor: Actor, line: str = "") -> Operation:
    target_type, target_id = target_key(target)
    return Operation.objects.create(
        kind=kind,
        status=Operation.Status.PENDING,
        actor_id=actor.user_id,
        actor_text=actor.name,
        source=actor.source,
        target_type=target_type,
        target_id=target_id,
        target_repr=str(target)[:200],
        log=f"{line}\n" if line else "",
    )


def operation_log(operation_id: int | None, line: str, *, progress: int | None = None) -> None:
    """Append a line (and optionally progress) without touching the rest of the row."""
    if operation_id is None:
        return
    op = Operation.objects.filter(pk=operation_id).first()
    if op is None:
        return
    fields = {"log": f"{op.log}{timezone.now():%H:%M:%S} {line}\n"}
    if op.status == Operation.Status.PENDING:
        fields.update(status=Operation.Status.RUNNING, started_at=timezone.now())
    if progress is not None:
        fields["progress"] = max(0, min(100, progress))
    Operation.objects.filter(pk=operation_id).update(**fields)


def operation_finish(operation_id: int | None, *, ok: bool, line: str = "") -> None:
    if operation_id is None:
        return
    if line:
        operation_log(operation_id, line)
    Operation.objects.filter(pk=operation_id).update(
        status=Operation.Status.SUCCEEDED if ok else Operation.Status.FAILED,
        progress=100 if ok else models.F("progress"),
        finished_at=timezone.now(),
    )
