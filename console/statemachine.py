"""State machines written once: states and allowed edges as data, one transition function.

Each app's `states.py` declares a `Machine`; `Machine.transition()` is the only code that assigns
a model's `state`. It locks the row, no-ops when already there, refuses an edge that is not
allowed, stamps `<state>_at` when the model has such a field, saves, audits, and the audit
schedules the realtime push on commit. Infrastructure: imports no app.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db import models, transaction
from django.utils import timezone

from console.audit import Actor, audit_record, audit_record_many


class InvalidTransition(Exception):
    """The requested state change is not an allowed edge. Nothing was changed."""

    def __init__(self, obj, current: str, requested: str):
        self.obj, self.current, self.requested = obj, current, requested
        super().__init__(f"{obj._meta.verbose_name} {obj}: cannot go from {current} to {requested}")


@dataclass(frozen=True)
class Machine:
    """States and allowed `(from, to)` edges of one model; `verb_prefix` like `fleet.gpu`."""

    verb_prefix: str
    states: tuple[str, ...]
    edges: frozenset[tuple[str, str]]

    def __post_init__(self):
        unknown = {s for edge in self.edges for s in edge} - set(self.states)
        if unknown:
            raise ValueError(f"{self.verb_prefix}: edges name unknown states {sorted(unknown)}")

    def allowed(self, current: str, requested: str) -> bool:
        return (current, requested) in self.edges

    def transition(
        self,
        obj: models.Model,
        to: str,
        *,
        actor: Actor,
        message: str = "",
        fields: dict | None = None,
        parent: models.Model | None = None,
    ) -> bool:
        """Move `obj` to state `to`. Returns False for a no-op, True for a change.

        `fields` are other attributes saved in the same write (e.g. a failure reason).
        """
        if to not in self.states:
            raise InvalidTransition(obj, getattr(obj, "state", "?"), to)
        # No savepoint: a refusal is decided before any write and raised after the block, so the
        # caller's transaction stays usable (and a reservation saves two round trips per change).
        with transaction.atomic(savepoint=False):
            locked = type(obj).objects.select_for_update().get(pk=obj.pk)
            current = locked.state
            refused = current != to and not self.allowed(current, to)
            if current == to or refused:
                _refresh(obj, locked)
                locked = None
            else:
                self._write(obj, locked, current, to, actor=actor, message=message, fields=fields, parent=parent)
        if refused:
            raise InvalidTransition(obj, current, to)
        return locked is not None

    def _write(self, obj, locked, current, to, *, actor, message, fields, parent) -> None:
        """Save the new state (and `<state>_at`, `fields`) and audit it, inside the caller's block."""
        changed = ["state"]
        locked.state = to
        stamp = f"{to}_at"
        if any(f.name == stamp for f in locked._meta.concrete_fields):
            setattr(locked, stamp, timezone.now())
            changed.append(stamp)
        for name, value in (fields or {}).items():
            setattr(locked, name, value)
            changed.append(name)
        locked.save(update_fields=changed)
        audit_record(
            actor=actor,
            verb=f"{self.verb_prefix}.{to}",
            target=locked,
            before={"state": current},
            after={"state": to, **{k: _jsonable(v) for k, v in (fields or {}).items()}},
            message=message,
            parent=parent,
        )
        _refresh(obj, locked)


    def transition_many(
        self,
        queryset: models.QuerySet,
        to: str,
        *,
        actor: Actor,
        message: str = "",
        fields: dict | None = None,
        parent: models.Model | None = None,
    ) -> list[models.Model]:
        """Move every row of `queryset` to `to` in one write: all or none.

        Rows already in `to` are left alone; one disallowed edge refuses the whole batch. Returns
        the rows that changed (refreshed). Same contract as `transition`, batched for reservations.
        """
        if to not in self.states:
            raise InvalidTransition(queryset.model(), "?", to)
        with transaction.atomic(savepoint=False):
            # Lock only these rows; join the required parents so the audit's str(row) needs no query
            # per row (a GPU's text names its server).
            rows = list(
                queryset.select_related(*_required_parents(queryset.model))
                .select_for_update(of=("self",))
                .order_by("pk")
            )
            refused = next((r for r in rows if r.state != to and not self.allowed(r.state, to)), None)
            changed = [] if refused else [row for row in rows if row.state != to]
            if changed:
                self._write_many(queryset, changed, to, actor=actor, message=message, fields=fields, parent=parent)
        if refused is not None:
            raise InvalidTransition(refused, refused.state, to)
        return changed

    def _write_many(self, queryset, changed, to, *, actor, message, fields, parent) -> None:
        """One UPDATE for the batch and one INSERT of its audit events."""
        values = dict(fields or {})
        stamp = f"{to}_at"
        if any(f.name == stamp for f in queryset.model._meta.concrete_fields):
            values[stamp] = timezone.now()
        before = {row.pk: row.state for row in changed}
        queryset.model.objects.filter(pk__in=before).update(state=to, **values)
        for row in changed:
            row.state = to
            for name, value in values.items():
                setattr(row, name, value)
        audit_record_many(
            actor=actor,
            verb=f"{self.verb_prefix}.{to}",
            targets=changed,
            before=[{"state": before[row.pk]} for row in changed],
            after={"state": to, **{k: _jsonable(v) for k, v in (fields or {}).items()}},
            message=message,
            parent=parent,
        )


def machine(verb_prefix: str, states: Iterable[str], edges: Iterable[tuple[str, str]]) -> Machine:
    return Machine(verb_prefix=verb_prefix, states=tuple(states), edges=frozenset(edges))


def _required_parents(model: type[models.Model]) -> list[str]:
    return [f.name for f in model._meta.concrete_fields if f.many_to_one and not f.null]


def _refresh(obj: models.Model, fresh: models.Model) -> None:
    for f in fresh._meta.concrete_fields:
        setattr(obj, f.attname, getattr(fresh, f.attname))


def _jsonable(value):
    if isinstance(value, models.Model):
        return value.pk
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
