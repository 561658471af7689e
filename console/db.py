"""Fast paths for the writes every lease request makes. Infrastructure: imports no app.

On PostgreSQL the ORM's bulk insert sends every column as an array (`INSERT … SELECT * FROM
UNNEST(…)`), and quoting those arrays client-side is its largest cost; a request writes a lease,
its GPU holds and 4–10 audit events. `insert_many` writes the same rows as one multi-row
`INSERT … VALUES … RETURNING pk`: for 5 events about 0.53–0.62 ms of CPU instead of 0.78–0.85
(bench/audit_insert.py). Elsewhere it is `bulk_create`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from django.db import connections, models, router


def insert_many(objs: Sequence[models.Model]) -> None:
    """Insert new rows of one model in one statement and set their primary keys. No signals,
    no validation: callers validate first, as with `bulk_create`."""
    if not objs:
        return
    model = type(objs[0])
    connection = connections[router.db_for_write(model)]
    if connection.vendor != "postgresql":
        model.objects.bulk_create(objs)
        return
    pk = model._meta.pk
    fields = [f for f in model._meta.concrete_fields if f is not pk]
    qn = connection.ops.quote_name
    row = "(" + ", ".join("%s::jsonb" if isinstance(f, models.JSONField) else "%s" for f in fields) + ")"
    params: list = []
    for obj in objs:
        for f in fields:
            value = f.pre_save(obj, True)  # auto_now_add stamps, defaults already on the instance
            if isinstance(f, models.JSONField):
                value = json.dumps(value, cls=f.encoder)
            params.append(value)
    sql = (
        f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
        f"VALUES {', '.join([row] * len(objs))} RETURNING {qn(pk.column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        # PostgreSQL returns the rows of an INSERT … VALUES in the order given (bulk_create relies on it too).
        for obj, (value,) in zip(objs, cursor.fetchall(), strict=True):
            setattr(obj, pk.attname, value)
            obj._state.adding = False
            obj._state.db = connection.alias


def from_db(fields: Sequence[models.Field], values: Sequence, *, using: str = "default") -> list:
    """Raw column values (from a statement written out) converted as the ORM converts them when it
    reads those fields: JSON decoded, and on SQLite times made aware and booleans made bool."""
    return from_db_rows(fields, [values], using=using)[0]


def from_db_rows(fields: Sequence[models.Field], rows: Sequence[Sequence], *, using: str = "default") -> list[list]:
    """`from_db` for many rows of the same columns: each column's converters are looked up once, as
    the ORM does per query (a page of 20 leases has 31 columns)."""
    connection = connections[using]
    columns = []
    for field in fields:
        col = field.get_col(field.model._meta.db_table)
        columns.append((col, (*connection.ops.get_db_converters(col), *col.get_db_converters(connection))))
    out = []
    for values in rows:
        row = []
        for value, (col, converters) in zip(values, columns, strict=True):
            if value is not None:
                for convert in converters:
                    value = convert(value, col, connection)
            row.append(value)
        out.append(row)
    return out
