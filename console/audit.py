"""The one way to write the audit log. Infrastructure: imports no app.

Services pass an `Actor` (who, from where, under which correlation id) and call `audit_record`
inside their transaction; the event is pushed to browsers after commit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from console import correlation, realtime
from console.db import insert_many
from console.models import AuditEvent, Source


@dataclass(frozen=True)
class Actor:
    """Who acts: a user (web/API) or a named system component (task, reconciler, agent)."""

    name: str
    source: str
    user_id: int | None = None
    correlation_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def for_user(cls, user, *, source: str = Source.WEB, correlation_id: str = "") -> Actor:
        return cls(name=user.get_username(), source=source, user_id=user.pk, correlation_id=correlation_id)

    @classmethod
    def system(cls, name: str, *, source: str = Source.TASK, correlation_id: str = "") -> Actor:
        return cls(name=name, source=source, correlation_id=correlation_id)


NOTIFY_CHANNEL = "console_audit"  # notified by the audit table's trigger (migration console 0005)

# The batch open on this thread, if any (see audit_batch).
_local = threading.local()


@contextmanager
def audit_batch() -> Iterator[None]:
    """Collect the events recorded inside the block and write them in one INSERT at its end, with
    one realtime push after commit: a lease reservation writes 4–10 events, so this saves as many
    round trips and event-loop hops. Use it inside the transaction (`with atomic(), audit_batch():`);
    an exception leaving the block drops the events with the transaction that rolls back. Nested
    batches join the outer one."""
    if getattr(_local, "events", None) is not None:
        yield
        return
    _local.events = []
    try:
        yield
        events = _local.events
    finally:
        _local.events = None
    _write(events)


def _append(events: list[AuditEvent]) -> list[AuditEvent]:
    """Into the open batch (returns the events, not yet saved), or saved and pushed now."""
    batch = getattr(_local, "events", None)
    if batch is not None:
        batch.extend(events)
    else:
        _write(events)
    return events


def _write(events: list[AuditEvent]) -> None:
    """One INSERT, and one realtime push once the transaction commits."""
    if events:
        insert_many(events)  # on PostgreSQL its trigger wakes the live relays at commit (console 0005)
        realtime.publish_many_on_commit([_message(e) for e in events])


def target_key(obj: models.Model) -> tuple[str, str]:
    return obj._meta.label_lower, str(obj.pk)


def audit_record(
    *,
    actor: Actor,
    verb: str,
    target: models.Model,
    before: dict | None = None,
    after: dict | None = None,
    message: str = "",
    parent: models.Model | None = None,
) -> AuditEvent:
    """Append one event and schedule its realtime push for after the transaction commits."""
    return audit_record_many(actor=actor, verb=verb, targets=[target], before=[before or {}], after=after or {},
                             message=message, parent=parent)[0]


def audit_record_many(
    *,
    actor: Actor,
    verb: str,
    targets: list[models.Model],
    before: list[dict],
    after: dict,
    message: str = "",
    parent: models.Model | None = None,
) -> list[AuditEvent]:
    """Append one event per target in a single insert (batched state changes)."""
    parent_type, parent_id = target_key(parent) if parent is not None else ("", "")
    events = []
    for target, prior in zip(targets, before, strict=True):
        target_type, target_id = target_key(target)
        events.append(AuditEvent(
            actor_id=actor.user_id,
            actor_text=actor.name,
            source=actor.source,
            correlation_id=actor.correlation_id or correlation.current(),
            verb=verb,
            target_type=target_type,
            target_id=target_id,
            target_repr=str(target)[:200],
            parent_type=parent_type,
            parent_id=parent_id,
            before=prior,
            after=after,
            message=message,
        ))
    return _append(events)


def _message(event: AuditEvent) -> tuple[str, dict]:
    return (
        event.verb,
        {
            "event_id": event.pk,
            "verb": event.verb,
            "target_type": event.target_type,
            "target_id": event.target_id,
            "parent_type": event.parent_type,
            "parent_id": event.parent_id,
            "after": event.after,
        },
    )
