"""Events page benchmark: server time of the events page over 1,000,000 audit rows on PostgreSQL.

Run: `DATABASE_URL=postgres://…/NAME .venv/bin/python bench/events_page.py [--rows N]`; bench/ui.py
runs it when its DATABASE_URL is PostgreSQL. The rows go to a dedicated database, NAME_events1m
(created when missing, kept between runs: it is filled again only when it does not hold N rows), by
one INSERT … SELECT generate_series with the secondary indexes dropped and built again afterwards.
Rows look like a busy fleet's: 20 verbs (3 of them rare), 10 actors, 7 sources, 5,000 objects,
a correlation id per 8 rows, one row every 0.9 s (about 10 days).

Prints readable figures, then as the last line one JSON object:
* `events_page_ms_1m`: the slowest of the pages below (target ≤ 150 ms);
* `events_first_ms_1m`, `events_deep_ms_1m` (`before=` the 100th oldest row),
  `events_filtered_ms_1m` (a rare verb), `events_prefix_deep_ms_1m` (`verb=fleet.gpu.`, deep),
  `events_window_ms_1m` (an hour, five days back), `events_object_ms_1m` (one server):
  GET /events/… in-process through the whole Django stack, median of 5 after one warm-up;
* `events_queries_1m`: SQL queries of the first page (the same on every page).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILL = """
SELECT setseed(0.42);
INSERT INTO console_auditevent (at, actor_text, source, correlation_id, verb, target_type, target_id,
  target_repr, parent_type, parent_id, before, after, message, actor_id)
SELECT now() - make_interval(secs => (%(rows)s - g) * 0.9),
  (ARRAY['reconciler','health-watcher','lease-worker','node-watcher','alice','bob','carol','simulator',
         'api-client','admin'])[1 + (g * 7 %% 10)],
  (ARRAY['task','reconciler','agent','web','api','simulator','cli'])[1 + (g * 13 %% 7)],
  md5((g / 8)::text),
  v.verb, v.tt, (1 + (g * 31 %% 5000))::text, v.tt || '-' || (1 + (g * 31 %% 5000)),
  CASE WHEN v.tt = 'fleet.gpu' THEN 'fleet.allocation' ELSE '' END,
  CASE WHEN v.tt = 'fleet.gpu' THEN (g / 8)::text ELSE '' END,
  '{"state": "free"}'::jsonb, '{"state": "reserved"}'::jsonb, '', NULL
FROM generate_series(1, %(rows)s) g
CROSS JOIN LATERAL (
  SELECT (ARRAY['fleet.gpu.reserved','fleet.gpu.in_use','fleet.gpu.scrubbing','fleet.gpu.free',
    'fleet.partition.active','fleet.partition.inactive','fleet.allocation.created','fleet.allocation.released',
    'tenants.lease.requested','tenants.lease.placed','tenants.lease.booting','tenants.lease.running',
    'tenants.lease.released','tenants.bootphase.started','tenants.bootphase.finished','fleet.server.cordoned',
    'fleet.server.active','fleet.gpu.quarantined','fleet.server.drained','tenants.tenant.created'])[i] AS verb,
    (ARRAY['fleet.gpu','fleet.gpu','fleet.gpu','fleet.gpu','fleet.partition','fleet.partition',
    'fleet.allocation','fleet.allocation','tenants.lease','tenants.lease','tenants.lease','tenants.lease',
    'tenants.lease','tenants.bootphase','tenants.bootphase','fleet.server','fleet.server','fleet.gpu',
    'fleet.server','tenants.tenant'])[i] AS tt
  FROM (SELECT CASE WHEN g %% 1000 = 0 THEN 18 + (g / 1000) %% 3
                    ELSE 1 + ((g::bigint * 2654435761) %% 4294967296) %% 17 END AS i) s
) v
"""


def bench_database(url: str) -> str:
    """NAME_events1m next to the given database, created when missing."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/") + "_events1m"
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path="/" + name))


def fill(rows: int) -> None:
    """Exactly `rows` audit rows: one INSERT … SELECT, secondary indexes built after it (faster)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM console_auditevent")
        if cur.fetchone()[0] == rows:
            print(f"({rows:,} audit rows already there)")
            return
        t = time.perf_counter()
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'console_auditevent' "
                    "AND indexname <> 'console_auditevent_pkey'")
        indexes = cur.fetchall()
        cur.execute("TRUNCATE console_auditevent")
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        cur.execute(FILL, {"rows": rows})
        inserted = time.perf_counter() - t
        cur.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            cur.execute(definition)
        cur.execute("ANALYZE console_auditevent")
        print(f"({rows:,} audit rows inserted in {inserted:.0f} s, {len(indexes)} indexes built; "
              f"{time.perf_counter() - t:.0f} s in all)")


def timed(client, url: str) -> tuple[float, int, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    assert client.get(url).status_code == 200, url
    times = []
    for _ in range(5):
        with CaptureQueriesContext(connection) as ctx:
            t = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200, url
    rows = response.content.count(b'<tr id="event-')
    return statistics.median(times), len(ctx.captured_queries), rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    given = os.environ.get("DATABASE_URL", "")
    if not given.startswith(("postgres://", "postgresql://")):
        sys.exit("events page bench: needs DATABASE_URL=postgres://… (a PostgreSQL server)")
    os.environ.update({
        "DATABASE_URL": bench_database(given), "DJANGO_SETTINGS_MODULE": "console.settings", "DEBUG": "0",
        "SECRET_KEY": "bench", "ALLOWED_HOSTS": "testserver", "LOG_LEVEL": "WARNING", "CELERY_BROKER_URL": "memory://",
    })
    import django

    django.setup()
    from datetime import timedelta

    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from console.models import AuditEvent
    from tests.factories import make_user

    call_command("migrate", verbosity=0)
    fill(args.rows)
    client = Client()
    client.force_login(make_user("viewer"))
    ids = AuditEvent.objects.order_by("id").values_list("id", flat=True)
    oldest, deep = ids[0], ids[100]
    five_days = (timezone.now() - timedelta(days=5)).replace(microsecond=0, tzinfo=None)
    pages = {
        "events_first_ms_1m": "/events/",
        "events_deep_ms_1m": f"/events/?before={deep}",
        "events_filtered_ms_1m": "/events/?verb=fleet.gpu.quarantined",
        "events_prefix_deep_ms_1m": f"/events/?verb=fleet.gpu.&before={oldest + 5000}",
        "events_window_ms_1m": f"/events/?since={(five_days - timedelta(hours=1)).isoformat()}"
                               f"&until={five_days.isoformat()}",
        "events_object_ms_1m": "/events/?target_type=fleet.server&target_id=77",
    }
    result = {}
    queries = {}
    for key, url in pages.items():
        ms, queries[key], rows = timed(client, url)
        result[key] = round(ms, 1)
        print(f"{url}: {ms:.1f} ms, {rows} rows, {queries[key]} queries")
    result["events_page_ms_1m"] = max(result.values())
    result["events_queries_1m"] = queries["events_first_ms_1m"]
    result["audit_rows"] = args.rows
    print(f"events page over {args.rows:,} rows: slowest {result['events_page_ms_1m']} ms (target ≤ 150 ms)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
