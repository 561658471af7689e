"""Lease throughput benchmark: leases granted per second through `tenants.services.lease_request`.

Run: `.venv/bin/python bench/lease_throughput.py` (PostgreSQL at DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/test). The bench creates a throwaway database (`bench_leases`)
next to the one DATABASE_URL names, migrates it, seeds a fleet of HGX H100 servers from platform
data and READY tenants, then times a fixed number of requests (1/2/4/8-GPU mix) with 1, 8 and 32
concurrent clients, each a thread with its own connection and its own tenant, in BENCH_PROCESSES
forked worker processes (default 1: one worker process serving all clients, as an API worker with
a thread pool would; each process keeps its own placement index, and with 2 or more they go stale
against each other and lose claims, which the figures then show). Between rounds every lease is
dropped and the GPUs are set free again, so every round starts on the same empty fleet and never
runs out of capacity. The database is dropped at the end. BENCH_SERVERS (default 128) and
BENCH_REQUESTS (per round, default 200) change the fleet and the round; keep the fleet at least
twice the GPUs a round asks for (about 2.4 per request), or leases stay pending.

What is measured: validation, quota check, lease row, placement decision (the process's live
placement index) and the reservation (an Allocation row, compare-and-set claim of the GPU rows,
AllocationGpu rows, state machine, audit events) — i.e. `lease_request` up to `placed`, one transaction, including the
realtime push after commit (in-memory channel layer unless REDIS_URL is set). Celery dispatch is
stubbed out (`console.dispatch.enqueue` / `on_commit` are no-ops): the partitioning, boot and clean-up
that tasks would do afterwards are not part of the figure. PostgreSQL runs as this machine has it
(synchronous_commit on: every lease waits for its WAL flush).

Prints readable figures, then as the last line one JSON object:

* `leases_per_s_c1`, `leases_per_s_c8`, `leases_per_s_c32`: leases granted (state `placed`) per
  second of wall time with that many concurrent clients.
* `gc_frozen`: whether the client processes froze their start-up heap first, as the web and worker
  processes do (console/startup.py); BENCH_GC_FREEZE=0 measures without.
* `claims_lost_c*`: claims the database refused because another process had taken the partition
  (retried; 0 with one process).
* `double_allocations`: GPUs held by more than one open allocation (AllocationGpu held), plus leases
  whose held GPUs are not exactly their partition's modules on their server, summed over all rounds
  (must be 0).
* `baseline_txn_per_s_c32`: one-row INSERT transactions per second on the same database, with the
  same 32 client threads in the same processes, measured in the same run (this machine's speed varies
  from day to day); `lease_to_baseline_c32` is `leases_per_s_c32` divided by it, the figure to
  compare across machines and days.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/test"
BENCH_DB = "bench_leases"
SERVERS = int(os.environ.get("BENCH_SERVERS", "128"))  # 1,024 GPUs; a round asks for about 480 of them
REQUESTS_PER_ROUND = int(os.environ.get("BENCH_REQUESTS", "200"))
WARMUP_REQUESTS = 64
CONCURRENCY = (1, 8, 32)
# Worker processes the clients are spread over (threads within each), like a web tier's workers.
PROCESSES = int(os.environ.get("BENCH_PROCESSES", "1"))
# Worker processes freeze their start-up heap (console/startup.py); BENCH_GC_FREEZE=0 measures without.
GC_FREEZE = os.environ.get("BENCH_GC_FREEZE", "1") != "0"
SIZE_MIX = ((1, 0.4), (2, 0.3), (4, 0.2), (8, 0.1))
IMAGE = "registry.example.com/bench/job:1"
SEED = 20261122


# --- throwaway database --------------------------------------------------------------------------


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def _create_db(base_url: str) -> str:
    _admin(base_url, f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    _admin(base_url, f'CREATE DATABASE "{BENCH_DB}"')
    return _with_db(base_url, BENCH_DB)


def _drop_db(base_url: str) -> None:
    _admin(base_url, f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')


def _setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("SECRET_KEY", "bench-only-secret")
    os.environ.setdefault("ALLOWED_HOSTS", "localhost")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


# --- seeding (platform data, like tests' make_server) ---------------------------------------------


def _seed(servers: int, tenants: int):
    from console.audit import Actor
    from console.models import Source
    from fleet.registration import ServerSpec, server_register_from_platform
    from hardware.platforms import get_platform
    from tenants.models import Tenant
    from tenants.states import TenantState

    actor = Actor.system("bench", source=Source.CLI)
    platform = get_platform("hgx-h100-8")
    variant = platform.variants[0].key
    for i in range(servers):
        server_register_from_platform(
            spec=ServerSpec(
                hostname=f"bench-{platform.key}-{i + 1:04d}",
                platform=platform.key,
                variant=variant,
                rack=f"bench-r{i // 32 + 1:02d}",
                slot=i % 32 + 1,
            ),
            actor=actor,
        )
    Tenant.objects.bulk_create(
        [
            Tenant(name=f"bench{i:03d}", display_name=f"Bench {i}", gpu_quota=100_000, state=TenantState.READY)
            for i in range(tenants)
        ]
    )
    return [f"bench{i:03d}" for i in range(tenants)]


def _stub_dispatch() -> None:
    from console import dispatch

    def nothing(name: str, *args) -> None:
        return None

    dispatch.enqueue = nothing
    dispatch.on_commit = nothing


def _reset_fleet() -> None:
    """Drop every lease and allocation and set every GPU free: the next round starts on an empty fleet.

    Bench-only bulk SQL, not a service: a real release goes through scrub and level."""
    from django.db import transaction

    from fleet.models import Allocation, AllocationGpu, Gpu
    from fleet.states import GpuState
    from tenants.models import BootPhase, Lease

    with transaction.atomic():
        Gpu.objects.exclude(state=GpuState.FREE).update(state=GpuState.FREE)
        BootPhase.objects.all().delete()
        Lease.objects.all().delete()
        AllocationGpu.objects.all().delete()
        Allocation.objects.all().delete()


# --- the invariants ---------------------------------------------------------------------------------


def double_allocations() -> int:
    """GPUs held by more than one open allocation, plus leases whose held GPUs are not exactly their
    partition's modules on their server."""
    from fleet.models import AllocationGpu
    from tenants.models import Lease
    from tenants.states import LEASE_HOLDS_GPUS

    counts = Counter(AllocationGpu.objects.filter(held=True).values_list("gpu_id", flat=True))
    bad = sum(1 for c in counts.values() if c > 1)
    held: dict[int, list[tuple[int, int]]] = {}
    for allocation_id, server_id, module_id in AllocationGpu.objects.filter(held=True).values_list(
        "allocation_id", "gpu__server_id", "gpu__module_id"
    ):
        held.setdefault(allocation_id, []).append((server_id, module_id))
    for allocation_id, server_id, modules in Lease.objects.filter(state__in=LEASE_HOLDS_GPUS).values_list(
        "allocation_id", "allocation__server_id", "allocation__partition__module_ids"
    ):
        rows = held.get(allocation_id, [])
        if sorted(m for _, m in rows) != sorted(modules or []) or any(s != server_id for s, _ in rows):
            bad += 1
    return bad


# --- the baseline ----------------------------------------------------------------------------------


def baseline_round(clients: int, transactions: int) -> float:
    """One-row INSERT transactions per second on the same database, `clients` threads spread over
    PROCESSES forked processes as the lease rounds are: what this machine's database does today."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_baseline (id bigserial PRIMARY KEY, v integer)")
    elapsed = max(_forked(clients, lambda n, first, shared: (_baseline_process, (n, transactions, *shared))))
    return transactions / elapsed if elapsed else 0.0


def _forked(clients: int, target_for) -> list:
    """Run `clients` client threads in up to PROCESSES forked processes, released together; returns
    what each process put on the results queue. `target_for(threads, first, shared)` gives a
    process's (function, args); `shared` is (next work index, start barrier, results queue)."""
    import multiprocessing as mp

    from django.db import connections

    processes = max(1, min(clients, PROCESSES))
    threads_per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    ctx = mp.get_context("fork")
    shared = (ctx.Value("i", 0), ctx.Barrier(processes + 1), ctx.Queue())
    connections.close_all()  # children open their own; a forked socket must not be shared
    procs, first = [], 0
    for n in threads_per:
        target, args = target_for(n, first, shared)
        procs.append(ctx.Process(target=target, args=args))
        first += n
    for proc in procs:
        proc.start()
    shared[1].wait()
    results = [shared[2].get() for _ in procs]
    for proc in procs:
        proc.join()
    return results


def _baseline_process(threads: int, transactions: int, next_index, barrier, results) -> None:
    from django.db import connection, transaction

    ready = threading.Barrier(threads + 1)
    go = threading.Event()

    def take() -> bool:
        with next_index.get_lock():
            if next_index.value >= transactions:
                return False
            next_index.value += 1
            return True

    def client() -> None:
        try:
            connection.ensure_connection()
            ready.wait()
            go.wait()
            while take():
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute("INSERT INTO bench_baseline (v) VALUES (%s)", [1])
        finally:
            connection.close()

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for t in pool:
        t.start()
    ready.wait()
    barrier.wait()
    start = time.perf_counter()
    go.set()
    for t in pool:
        t.join()
    results.put(time.perf_counter() - start)


# --- one timed round -------------------------------------------------------------------------------


def _sizes(n: int, rnd: random.Random) -> list[int]:
    sizes, weights = zip(*SIZE_MIX, strict=True)
    return rnd.choices(sizes, weights=weights, k=n)


def run_round(clients: int, requests: int, tenants: list[str], rnd: random.Random) -> dict:
    """`requests` lease_request calls shared by `clients` concurrent clients, spread over up to
    PROCESSES forked worker processes (threads within each), as a web tier runs several workers;
    returns timing and outcome."""
    work = _sizes(requests, rnd)
    processes = max(1, min(clients, PROCESSES))
    outcomes = _forked(clients, lambda n, first, shared: (
        _client_process, (tenants[first:first + n], work, *shared)))
    errors = [o["error"] for o in outcomes if o["error"]]
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}")
    from tenants.states import LeaseState

    granted = sum(o["placed"].get(LeaseState.PLACED, 0) for o in outcomes)
    latencies = sorted(x for o in outcomes for x in o["latencies"])
    # Each process's own clock from its first request to its last, the slowest bounds the round.
    elapsed = max(o["elapsed"] for o in outcomes)
    return {
        "clients": clients,
        "processes": processes,
        "requests": requests,
        "granted": granted,
        "not_granted": requests - granted,
        "seconds": elapsed,
        "leases_per_s": granted / elapsed if elapsed else 0.0,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0,
        "refusals": sum(o["refusals"] for o in outcomes),
        "loads": sum(o["loads"] for o in outcomes),
        "syncs": sum(o["syncs"] for o in outcomes),
    }


def _client_process(tenants: list[str], work: list[int], next_index, barrier, results) -> None:
    """One worker process: warm its placement index and connections, then run one client thread per
    tenant until the shared work list is used up."""
    from django.db import connection

    from console.audit import Actor
    from console.models import Source
    from console.startup import freeze_startup_heap
    from fleet.placement_live import live_index
    from tenants import services

    actor = Actor.system("bench", source=Source.API)
    lock = threading.Lock()
    placed: Counter = Counter()
    latencies: list[float] = []
    errors: list[str] = []
    ready = threading.Barrier(len(tenants) + 1)
    go = threading.Event()

    def take() -> int | None:
        with next_index.get_lock():
            k = next_index.value
            if k >= len(work):
                return None
            next_index.value = k + 1
            return k

    def client(tenant: str) -> None:
        mine = []
        try:
            connection.ensure_connection()
            ready.wait()
            go.wait()
            while (k := take()) is not None:
                t0 = time.perf_counter()
                lease = services.lease_request(tenant_name=tenant, image=IMAGE, gpu_count=work[k], actor=actor)
                mine.append(time.perf_counter() - t0)
                with lock:
                    placed[lease.state] += 1
        except BaseException as exc:  # reported to the parent
            errors.append(repr(exc))
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(t,)) for t in tenants]
    for t in threads:
        t.start()
    live_index.refresh()
    if GC_FREEZE:
        freeze_startup_heap()  # as the web and Celery worker processes do once started
    ready.wait()
    barrier.wait()
    start = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    results.put({"placed": dict(placed), "latencies": latencies, "elapsed": elapsed,
                 "error": errors[0] if errors else "", "refusals": live_index.refusals, "loads": live_index.loads,
                 "syncs": live_index.syncs})


def main() -> int:
    base_url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    if not base_url.startswith(("postgres://", "postgresql://")):
        print(f"DATABASE_URL must be PostgreSQL, got {base_url}", file=sys.stderr)
        return 2
    url = _create_db(base_url)
    try:
        return _bench(url)
    finally:
        from django.db import connections

        connections.close_all()
        _drop_db(base_url)


def _bench(url: str) -> int:
    t0 = time.perf_counter()
    _setup_django(url)
    _stub_dispatch()
    tenants = _seed(SERVERS, max(CONCURRENCY))
    print(f"database {BENCH_DB} migrated and seeded in {time.perf_counter() - t0:.1f}s: {SERVERS} HGX H100 "
          f"servers ({SERVERS * 8} GPUs), {len(tenants)} READY tenants")
    print("measures lease_request up to `placed` (validation, quota, placement, reservation, audit); "
          "Celery dispatch stubbed out (enqueue/on_commit are no-ops)")
    print(f"size mix {dict(SIZE_MIX)}; {REQUESTS_PER_ROUND} requests per round; fleet reset between rounds")
    rnd = random.Random(SEED)
    run_round(8, WARMUP_REQUESTS, tenants, rnd)  # warm-up: connections, caches, query plans
    _reset_fleet()
    result: dict = {}
    doubles = 0
    for clients in CONCURRENCY:
        r = run_round(clients, REQUESTS_PER_ROUND, tenants, rnd)
        bad = double_allocations()
        doubles += bad
        _reset_fleet()
        print(f"c={clients:>2}: {r['granted']}/{r['requests']} granted in {r['seconds']:.2f}s = "
              f"{r['leases_per_s']:.0f} leases/s (p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms) over "
              f"{r['processes']} processes, {r['refusals']} claims lost to another process, "
              f"{r['loads']} fleet reads, {r['syncs']} looks by fingerprint, "
              f"double allocations {bad}")
        result[f"leases_per_s_c{clients}"] = round(r["leases_per_s"], 1)
        result[f"not_granted_c{clients}"] = r["not_granted"]
        result[f"p99_ms_c{clients}"] = round(r["p99_ms"], 1)
        result[f"claims_lost_c{clients}"] = r["refusals"]
    top = max(CONCURRENCY)
    baseline = baseline_round(top, REQUESTS_PER_ROUND * 4)
    ratio = result[f"leases_per_s_c{top}"] / baseline if baseline else 0.0
    print(f"baseline: {baseline:.0f} one-row INSERT transactions/s with {top} clients on the same database; "
          f"leases/s at c={top} are {ratio:.3f} of it")
    result[f"baseline_txn_per_s_c{top}"] = round(baseline, 1)
    result[f"lease_to_baseline_c{top}"] = round(ratio, 3)
    result["double_allocations"] = doubles
    result["requests_per_round"] = REQUESTS_PER_ROUND
    result["servers"] = SERVERS
    result["processes"] = PROCESSES
    result["gc_frozen"] = GC_FREEZE
    result["dispatch"] = "stubbed"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
