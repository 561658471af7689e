"""Long operator actions as `Operation` rows the UI polls. Infrastructure: imports no app."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from console.audit import Actor, target_key
from console.models import Operation


def operation_start(*, kind: str, target: models.Model, actor: Actor, line: str = "",
                    parent: Operation | None = None, target_repr: str = "") -> Operation:
    """A new pending operation on `target`; with `parent`, one part of that operation."""
    target_type, target_id = target_key(target)
    return Operation.objects.create(
        parent=parent,
        kind=kind,
        status=Operation.Status.PENDING,
        actor_id=actor.user_id,
        actor_text=actor.name,
        source=actor.source,
        target_type=target_type,
        target_id=target_id,
        target_repr=(target_repr or str(target))[:200],
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
    if op.parent_id:
        _roll_up(op.parent_id)


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
    _roll_up_parent_of(operation_id)


def operation_cancel(operation_id: int, *, line: str) -> None:
    """End an unfinished operation `cancelled` (and its parent's progress with it)."""
    operation_log(operation_id, line)
    Operation.objects.filter(pk=operation_id, status__in=Operation.UNFINISHED).update(
        status=Operation.Status.CANCELLED, finished_at=timezone.now())
    _roll_up_parent_of(operation_id)


def _roll_up_parent_of(operation_id: int) -> None:
    parent_id = Operation.objects.filter(pk=operation_id).values_list("parent_id", flat=True).first()
    if parent_id:
        _roll_up(parent_id)


def _roll_up(parent_id: int) -> None:
    """A parent's progress is its parts' mean; it ends when they all have: failed if one failed,
    cancelled if one was cancelled, else succeeded."""
    parts = list(Operation.objects.filter(parent_id=parent_id).values_list("status", "progress"))
    if not parts:
        return
    S = Operation.Status
    fields: dict = {"progress": sum(p for _, p in parts) // len(parts)}
    statuses = {s for s, _ in parts}
    if not statuses & set(Operation.UNFINISHED):
        fields.update(finished_at=timezone.now(), status=S.FAILED if S.FAILED in statuses
                      else S.CANCELLED if S.CANCELLED in statuses else S.SUCCEEDED)
        if fields["status"] == S.SUCCEEDED:
            fields["progress"] = 100
    elif statuses != {S.PENDING}:
        fields["status"] = S.RUNNING
        Operation.objects.filter(pk=parent_id, started_at__isnull=True).update(started_at=timezone.now())
    Operation.objects.filter(pk=parent_id, status__in=Operation.UNFINISHED).update(**fields)
