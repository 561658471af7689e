"""State machines written once: states and allowed edges as data, one transition function.

Each app's `states.py` declares a `Machine`; `Machine.transition()` is the only code that assigns
a model's `state`. It locks the row, no-ops when already there, refuses an edge that is not
allowed, stamps `<state>_at` when the model has such a field, saves, audits, and the audit
schedules the realtime push on commit. Infrastructure: imports no app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from django.db import connections, models, router, transaction
from django.utils import timezone

from console.audit import Actor, audit_record_many


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
    # Called after commit with the new state of every committed change (see `subscribe`).
    listeners: list[Callable[[str], None]] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self):
        unknown = {s for edge in self.edges for s in edge} - set(self.states)
        if unknown:
            raise ValueError(f"{self.verb_prefix}: edges name unknown states {sorted(unknown)}")

    def allowed(self, current: str, requested: str) -> bool:
        return (current, requested) in self.edges

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call `listener(new_state)` at each change and again after it commits (e.g. a cache of free
        GPUs that must notice capacity coming back: a read inside the transaction sees the change,
        a read elsewhere only once it commits). Listeners must be cheap and must not raise."""
        self.listeners.append(listener)

    def _notify_on_commit(self, to: str) -> None:
        for listener in self.listeners:
            listener(to)
            transaction.on_commit(lambda listener=listener: listener(to))

    def transition(
        self,
        obj: models.Model,
        to: str,
        *,
        actor: Actor,
        message: str = "",
        fields: dict | None = None,
        parent: models.Model | None = None,
        locked: bool = False,
    ) -> bool:
        """Move `obj` to state `to`. Returns False for a no-op, True for a change.

        `fields` are other attributes saved in the same write (e.g. a failure reason). `locked=True`
        says the caller's transaction already holds `obj`'s row lock (or created the row) and `obj`
        is current, so it is not read again.
        """
        if to not in self.states:
            raise InvalidTransition(obj, getattr(obj, "state", "?"), to)
        # No savepoint: a refusal is decided before any write and raised after the block, so the
        # caller's transaction stays usable (and a reservation saves two round trips per change).
        with transaction.atomic(savepoint=False):
            row = obj if locked else type(obj).objects.select_for_update().get(pk=obj.pk)
            current = row.state
            refused = current != to and not self.allowed(current, to)
            changed = current != to and not refused
            if changed:
                self._write(type(row), [row], to, actor=actor, message=message, fields=fields, parent=parent)
            if row is not obj:
                _refresh(obj, row)
        if refused:
            raise InvalidTransition(obj, current, to)
        return changed

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
                self._write(queryset.model, changed, to, actor=actor, message=message, fields=fields, parent=parent)
        if refused is not None:
            raise InvalidTransition(refused, refused.state, to)
        return changed

    def _write(self, model, rows, to, *, actor, message, fields, parent) -> None:
        """One UPDATE of the rows (state, `<state>_at`, `fields`) and one INSERT of their audit
        events, inside the caller's block."""
        before = [row.state for row in rows]
        _update(model, rows, to, _values(model, to, fields))
        self._audit(rows, before, to, actor=actor, message=message, fields=fields, parent=parent)

    def _audit(self, rows, before, to, *, actor, message, fields, parent) -> None:
        """The audit events of a change (one per row, one INSERT), and the listeners."""
        after = {"state": to, **{k: _jsonable(v) for k, v in (fields or {}).items()}}
        audit_record_many(actor=actor, verb=f"{self.verb_prefix}.{to}", targets=rows,
                          before=[{"state": b} for b in before], after=after, message=message, parent=parent)
        if self.listeners:
            self._notify_on_commit(to)

    def claim_many(
        self,
        model: type[models.Model],
        pks: Sequence[int],
        to: str,
        *,
        expect: str,
        actor: Actor,
        guard: Guard | None = None,
        fields: dict | None = None,
        parent: models.Model | None = None,
        related: dict[str, models.Model] | None = None,
    ) -> list[models.Model] | None:
        """Compare-and-set: move the rows `pks` from `expect` to `to` only if every one of them is
        in `expect` and not locked by another transaction, and the `guard` row (e.g. their server)
        is in one of the guard's states; otherwise change nothing and return None.

        It never waits on a row another transaction holds (PostgreSQL: one statement with
        `FOR UPDATE SKIP LOCKED`; the guard's row is locked `FOR SHARE SKIP LOCKED`, so a concurrent
        state change of it waits for this transaction, or, if it came first, refuses the claim).
        Elsewhere the rows are read then written inside the caller's transaction, which SQLite
        serialises. `related` sets foreign-key objects already at hand on the rows (the audit's text
        of a GPU names its server).
        """
        if not self.allowed(expect, to):
            raise InvalidTransition(model(), expect, to)
        pks = list(pks)
        values = _values(model, to, fields)
        with transaction.atomic(savepoint=False):
            if connections[router.db_for_write(model)].vendor == "postgresql":
                rows = _claim_postgresql(model, pks, to, expect, guard, values)
            else:
                rows = list(model.objects.filter(pk__in=pks, state=expect).order_by("pk"))
                if len(rows) == len(pks) and (
                    guard is None or guard.model.objects.filter(pk=guard.pk, state__in=guard.states).exists()
                ):
                    _update(model, rows, to, values)
                else:
                    rows = None
            if rows is None:
                return None
            for row in rows:
                for name, obj in (related or {}).items():
                    setattr(row, name, obj)
            self._audit(rows, [expect] * len(rows), to, actor=actor, message="", fields=fields, parent=parent)
        return rows


@dataclass(frozen=True)
class Guard:
    """A row a claim depends on: `model` row `pk` must be in one of `states` (e.g. the GPUs' server
    while it is schedulable)."""

    model: type[models.Model]
    pk: int
    states: tuple[str, ...]


_CLAIM_SQL: dict[tuple, str] = {}


def _claim_postgresql(model, pks, to, expect, guard, values) -> list[models.Model] | None:
    """The compare-and-set as one statement: lock what is free and unlocked, update only if that is
    all of them. Returns the updated rows, or None."""
    db = router.db_for_write(model)
    connection = connections[db]
    fields_ = model._meta.concrete_fields
    key = (model, tuple(values), guard.model if guard else None)
    sql = _CLAIM_SQL.get(key)
    if sql is None:  # the statement's text depends only on these; built once per process
        qn = connection.ops.quote_name
        table, pk = qn(model._meta.db_table), qn(model._meta.pk.column)
        sets = [f"{qn('state')} = %s"] + [f"{qn(model._meta.get_field(n).column)} = %s" for n in values]
        guard_sql = ""
        if guard is not None:
            gtable, gpk = qn(guard.model._meta.db_table), qn(guard.model._meta.pk.column)
            # SKIP LOCKED here too: a plain FOR SHARE in this sub-select makes PostgreSQL wait on the
            # GPU rows as well (the outer SKIP LOCKED is lost). Shared locks of other claims do not
            # conflict; a server being changed (its row locked FOR UPDATE) refuses the claim.
            guard_sql = (f" AND EXISTS (SELECT 1 FROM {gtable} WHERE {gpk} = %s AND state = ANY(%s)"
                         f" FOR SHARE SKIP LOCKED)")
        sql = _CLAIM_SQL[key] = (
            f"WITH picked AS (SELECT {pk} FROM {table} WHERE {pk} = ANY(%s) AND {qn('state')} = %s"
            f"{guard_sql} FOR UPDATE SKIP LOCKED) "
            f"UPDATE {table} SET {', '.join(sets)} FROM picked "
            f"WHERE {table}.{pk} = picked.{pk} AND (SELECT count(*) FROM picked) = %s "
            f"RETURNING {', '.join(f'{table}.{qn(f.column)}' for f in fields_)}"
        )
    params = [to]
    for name, value in values.items():
        f = model._meta.get_field(name)
        if isinstance(value, models.Model):
            value = value.pk
        params.append(None if value is None else f.get_db_prep_save(value, connection))
    guard_params = [guard.pk, list(guard.states)] if guard is not None else []
    with connection.cursor() as cursor:
        cursor.execute(sql, [pks, expect, *guard_params, *params, len(pks)])
        fetched = cursor.fetchall()
    if len(fetched) != len(pks):
        return None
    converters = [getattr(f, "from_db_value", None) for f in fields_]
    rows = [
        model.from_db(db, [f.attname for f in fields_],
                      [c(v, None, connection) if c is not None and v is not None else v
                       for c, v in zip(converters, row, strict=True)])
        for row in fetched
    ]
    return sorted(rows, key=lambda r: r.pk)


def _values(model: type[models.Model], to: str, fields: dict | None) -> dict:
    """What a change to `to` writes besides `state`: `fields`, and `<to>_at` where the model has it."""
    values = dict(fields or {})
    stamp = f"{to}_at"
    if any(f.name == stamp for f in model._meta.concrete_fields):
        values[stamp] = timezone.now()
    return values


def _update(model: type[models.Model], rows: list[models.Model], to: str, values: dict) -> None:
    """One UPDATE of these rows, and the same values on the instances."""
    model.objects.filter(pk__in=[row.pk for row in rows]).update(state=to, **values)
    for row in rows:
        row.state = to
        for name, value in values.items():
            setattr(row, name, value)


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
