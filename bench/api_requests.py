"""What each kind of API request costs in-process, and how many statements it sends.

Run: `.venv/bin/python bench/api_requests.py` (PostgreSQL at DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/test; a throwaway database `bench_api_requests_<pid>` is created
and dropped). It seeds BENCH_SERVERS servers (default 128) and one tenant, then runs BENCH_LIVES tenant
lives (default 100, after 30 of warm-up) through Django's test client, the whole middleware chain
and DRF included, no HTTP server: POST /api/v1/containers, GET the lease, GET /api/v1/leases (20),
DELETE the lease, and GET /api/v1/me as the baseline measured in the same run.

Where bench/api.py says how fast the server is, this says where a request's time goes: the median
milliseconds and the statements of each kind (Django's captured queries, BEGIN and COMMIT included).
BENCH_SHOW_SQL=1 first prints each kind's statements in the last life.
Prints one line per kind, then one JSON object: `<kind>_ms`, `<kind>_queries`,
`<kind>_to_me` (the median over /api/v1/me's, comparable across machines), and where PostgreSQL runs on
this host (Linux), `<kind>_pg_cpu_ms`: the CPU its backend spent per request of that kind (user and
system time from /proc, in clock ticks: a mean over the lives, not a per-request figure).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lease_throughput
from api import IMAGE, SIZES, _seed
from lease_throughput import _create_db, _drop_db, _setup_django

lease_throughput.BENCH_DB = os.environ.get("BENCH_DB", f"bench_api_requests_{os.getpid()}")
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/test"
SERVERS = int(os.environ.get("BENCH_SERVERS", "128"))
LIVES = int(os.environ.get("BENCH_LIVES", "100"))
WARMUP = 30
KINDS = ("create", "get", "list", "delete", "me")


def main() -> None:
    base = os.environ.get("DATABASE_URL", DEFAULT_URL)
    os.environ.update({"API_RATE": "1000000/min", "API_CREATE_RATE": "1000000/min", "DEBUG": "",
                       "ALLOWED_HOSTS": "testserver", "LOG_LEVEL": "WARNING", "CELERY_BROKER_URL": "memory://"})
    url = _create_db(base)
    try:
        _setup_django(url)
        (tenant, token), = _seed(SERVERS, 1)
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        client, rng = Client(HTTP_AUTHORIZATION=f"Bearer {token}"), random.Random(1)
        times: dict[str, list[float]] = {k: [] for k in KINDS}
        queries: dict[str, int] = {}
        sql: dict[str, list[str]] = {}

        backend_cpu: dict[str, float] = dict.fromkeys(KINDS, 0.0)

        def timed(kind: str, call):
            cpu_before = _backend_cpu_s(connection)
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = call()
                times[kind].append(time.perf_counter() - started)
            if cpu_before is not None:
                backend_cpu[kind] += _backend_cpu_s(connection) - cpu_before
            queries[kind] = len(captured.captured_queries)
            sql[kind] = [q["sql"] for q in captured.captured_queries]
            assert response.status_code in (200, 202), (kind, response.status_code, response.content[:300])
            return response

        for life in range(WARMUP + LIVES):
            if life == WARMUP:
                for kind in KINDS:
                    times[kind].clear()
                    backend_cpu[kind] = 0.0
            body = json.dumps({"container-url": IMAGE, "tenancy": tenant, "gpus": rng.choice(SIZES)})
            lease = timed("create", lambda body=body, life=life: client.post(
                "/api/v1/containers", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=f"k{life}")).json()
            timed("get", lambda lease=lease: client.get(f"/api/v1/leases/{lease['id']}"))
            timed("list", lambda: client.get("/api/v1/leases?page_size=20"))
            timed("delete", lambda lease=lease: client.delete(f"/api/v1/leases/{lease['id']}"))
            timed("me", lambda: client.get("/api/v1/me"))
        medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
        if os.environ.get("BENCH_SHOW_SQL"):  # each kind's statements in the last life
            for kind in KINDS:
                print(f"-- {kind}\n" + "\n".join(f"  {q[:400]}" for q in sql[kind]))
        figures = {}
        measured_cpu = _backend_cpu_s(connection) is not None
        for kind in KINDS:
            pg_ms = backend_cpu[kind] / LIVES * 1000
            print(f"{kind:7s} {medians[kind]:6.2f} ms  {queries[kind]:2d} statements  "
                  f"{medians[kind] / medians['me']:5.1f}× /api/v1/me"
                  + (f"  PostgreSQL CPU {pg_ms:.2f} ms" if measured_cpu else ""))
            figures.update({f"{kind}_ms": round(medians[kind], 2), f"{kind}_queries": queries[kind],
                            f"{kind}_to_me": round(medians[kind] / medians["me"], 2)})
            if measured_cpu:
                figures[f"{kind}_pg_cpu_ms"] = round(pg_ms, 2)
        print(json.dumps({**figures, "servers": SERVERS, "lives": LIVES}))
    finally:
        from django.db import connections

        connections.close_all()
        _drop_db(base)


def _backend_cpu_s(connection) -> float | None:
    """CPU seconds the PostgreSQL backend serving `connection` has used (user + system, from /proc):
    where the server runs on this host, what each kind costs the database too. None elsewhere."""
    connection.ensure_connection()
    try:
        with open(f"/proc/{connection.connection.info.backend_pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, AttributeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
