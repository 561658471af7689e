"""REST API benchmark: the README's ASGI server (the Procfile's `web`) on PostgreSQL, 32 clients.

Run: `.venv/bin/python bench/api.py` (PostgreSQL at DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/test; the bench creates and at the end drops a throwaway database
`bench_api_<pid>` next to it). It migrates it, seeds BENCH_SERVERS HGX H100 servers (default 768) and one
READY tenant with its own API token per client, starts the Procfile's `web` line (uvicorn,
WEB_WORKERS processes, default 2, sharing one socket, least loaded accepts: console/webserver.py; each answering
on WEB_THREADS threads, default 4: console/asgi_http.py)
on a free loopback port (DEBUG off, tasks to an in-memory broker:
the workers' side is not measured), and runs 32 concurrent clients, each a thread with one keep-alive
HTTP/1.1 connection, for BENCH_SECONDS (default 10, after 2 of warm-up).

Each client loops over a tenant's life: POST /api/v1/containers (seed payload, 1/2/4/8 GPUs, an
Idempotency-Key), GET the lease, GET /api/v1/leases (a page of 20), DELETE the lease.
In the same run, the same clients call GET /api/v1/me (the cheapest authenticated answer: token
lookup, permission, a small JSON body) for the baseline, so the figure compares across machines.
The two take turns: BENCH_SLICES (default 4) turns each of BENCH_SECONDS / BENCH_SLICES, mix then
baseline, 1 s to settle before each later turn. This machine's speed drifts within minutes (a run's
baseline went from 739 to 535 requests a second within five minutes), and measured one
after the other the two figures saw different machines. A request counts when it finishes inside a
turn's measured window, not when it was in flight as the window closed.
No worker runs, so a deleted lease's GPUs stay with it (`releasing`) and every placed create takes
GPUs for good: the fleet is sized so that a run does not fill it (768 servers, 6,144 GPUs; a run
at 260 requests a second takes some 3,600). A full fleet would turn the later creates into cheaper `pending` ones (no
claim) and flatter the figure: the bench prints how many creates were placed (`leases_never_placed`
must be 0 for a figure of the placed path).
Then the same mix arrives at a fixed rate (BENCH_OPEN_RATE, default 200 requests a second, Poisson),
each request taken by a free client, for its latency when the server is not saturated
(BENCH_OPEN_RATE=0 skips it). The default is the issue's throughput target: what a client sees
when the 32 clients together ask at the rate the server must sustain. On a day this machine
answers little more than that, the server is near saturation and the figure says so.

Read the saturated latencies with Little's law: 32 clients that each wait for their answer keep 32
requests in the server, so the mean latency is 32 / throughput (160 ms at 200 requests a second);
a p99 under 100 ms at saturation needs well over 320 requests a second. The fixed-rate figures say
what a client sees below saturation.

Prints readable figures, then as the last line one JSON object:
* `api_req_per_s_c32`: requests answered per second (all four kinds), 32 clients;
* `api_p50_ms`, `api_p99_ms`: their latency percentiles;
* `api_errors`: answers that were not the expected 2xx (any 5xx included);
* `double_allocations`: GPUs held by two open allocations, or leases whose GPUs are not their
  partition (must be 0);
* `leases_placed`, `leases_never_placed`: the run's creates that were placed, and those that found
  the fleet full (0 unless BENCH_SERVERS is too small for the run);
* `auth_us_per_request`: microseconds to authenticate one token (digest lookup, constant-time
  compare), in-process, averaged over 2,000 calls;
* `baseline_req_per_s_c32`: GET /api/v1/me per second with the same 32 clients;
* `api_mean_ms`: the mix's mean latency (32 clients: about 32 / `api_req_per_s_c32`);
* `<kind>_p50_ms`, `<kind>_p99_ms`: each kind's latency in the mix (create, get, list, delete): what the
  tail is made of;
* `web_cpu_ms_per_req`, `db_cpu_ms_per_req` (`cpu_ms_per_req` their sum): CPU milliseconds the web
  server's processes and PostgreSQL's spent per request of the mix inside its measured windows
  (Linux, PostgreSQL on this host); `baseline_web_cpu_ms_per_req`, `baseline_db_cpu_ms_per_req` the
  same for the baseline, and `cpu_to_baseline` the ratio of the two totals. On a 2-core machine
  whose cores other tenants share, a request's CPU drifts less than the rate answered: it says
  whether a change made requests cheaper where the throughput is lost in the noise;
* `clients_per_worker`: the clients' connections each web worker held (Linux), and
  `connections_out_of_turn` how many a worker took while another held fewer (that one did not come
  within the server's patience: a busy machine);
* `open_p50_ms`, `open_p99_ms`: the mix's latency when it arrives at `open_rate_req_per_s`, counted
  from when each request was due (`open_answered_req_per_s`: the rate answered).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lease_throughput
from lease_throughput import _create_db, _drop_db, _setup_django, double_allocations

# Its helpers create and drop this one; a name per run, so two runs at once never drop each other's.
lease_throughput.BENCH_DB = os.environ.get("BENCH_DB", f"bench_api_{os.getpid()}")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/test"
SERVERS = int(os.environ.get("BENCH_SERVERS", "768"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
WARMUP_S = 2.0
SETTLE_S = 1.0  # before each later turn of a round: the server's queue refills with the new work
SLICES = int(os.environ.get("BENCH_SLICES", "4"))
CLIENTS = 32
IMAGE = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"
SIZES = (1, 1, 1, 1, 2, 2, 2, 4, 4, 8)
OPEN_RATE = float(os.environ.get("BENCH_OPEN_RATE", "200"))


def _seed(servers: int, clients: int) -> list[tuple[str, str]]:
    from console.audit import Actor
    from console.models import Source
    from fleet.registration import ServerSpec, server_register_from_platform
    from hardware.platforms import get_platform
    from tenants.models import Tenant
    from tenants.states import TenantState
    from tenants.tokens import api_token_create

    actor = Actor.system("bench", source=Source.CLI)
    platform = get_platform("hgx-h100-8")
    for i in range(servers):
        server_register_from_platform(spec=ServerSpec(
            hostname=f"bench-{i + 1:04d}", platform=platform.key, variant=platform.variants[0].key,
            rack=f"bench-r{i // 32 + 1:02d}", slot=i % 32 + 1), actor=actor)
    out = []
    for i in range(clients):
        tenant = Tenant.objects.create(name=f"bench{i:03d}", gpu_quota=100_000, state=TenantState.READY)
        out.append((tenant.name, api_token_create(actor=actor, tenant=tenant)[1]))
    # A fleet's tables have statistics in production; planned from none (a fresh database, before
    # autovacuum's first pass) the lease page read every GPU of the fleet.
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return out


def procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise SystemExit(f"no {name!r} process in the Procfile")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(url: str, port: int, board: str) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": url, "DEBUG": "", "SECRET_KEY": "bench-only-secret",
           "ALLOWED_HOSTS": "127.0.0.1,localhost", "CELERY_BROKER_URL": "memory://", "LOG_LEVEL": "WARNING",
           "API_RATE": "1000000/min", "API_CREATE_RATE": "1000000/min",
           "DATABASE_POOL": os.environ.get("DATABASE_POOL", "1"), "DATABASE_POOL_MAX": "40"}
    # The README's server as `make run` starts it: the Procfile's `web` line, on a free port.
    env["WEB_PORT"] = str(port)
    env["WEB_CONNECTION_BOARD"] = board  # where the workers post their connection counts
    env.setdefault("WEB_WORKERS", os.environ.get("WEB_WORKERS", "2"))
    cmd = ["bash", "-c", "exec " + procfile_command("web").replace(".venv/bin/", f"{Path(sys.executable).parent}/")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200 and _all_workers_accept(env, int(env["WEB_WORKERS"])):
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the web server did not start")


def _all_workers_accept(env: dict, workers: int) -> bool:
    """Whether every web worker accepts (is on the server's connection board). The first to start
    answers /healthz while a slower one may still be importing Django; clients that connect then all
    land on the first and stay there (a slow day gave [32, 0] and half the server)."""
    if workers <= 1:
        return True
    from console.webserver import workers_on_board

    return workers_on_board(env["WEB_CONNECTION_BOARD"]) == workers


class Client:
    def __init__(self, port: int, tenant: str, token: str, index: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.tenant, self.headers, self.rng = tenant, {"Authorization": f"Bearer {token}"}, random.Random(index)
        self.samples: list[tuple[str, float, float]] = []  # (kind, finished at, seconds)
        self.unexpected = 0  # answers not as expected, in every round (warm-ups too)
        self.n = 0
        self.lease: int | None = None  # the open-rate round's lease in progress
        self.stage = 0

    def call(self, kind: str, method: str, path: str, body: dict | None = None, expect=(200,),
             **headers) -> dict | None:
        payload = json.dumps(body) if body is not None else None
        hdrs = {**self.headers, **headers, **({"Content-Type": "application/json"} if payload else {})}
        started = time.perf_counter()
        self.conn.request(method, path, payload, hdrs)
        response = self.conn.getresponse()
        data = response.read()
        finished = time.perf_counter()
        self.samples.append((kind, finished, finished - started))
        if response.status not in expect:
            self.unexpected += 1
            return None
        return json.loads(data) if data else None

    def life(self) -> None:
        self.n += 1
        body = {"container-url": IMAGE, "tenancy": self.tenant, "gpus": self.rng.choice(SIZES)}
        lease = self.call("create", "POST", "/api/v1/containers", body, expect=(202,),
                          **{"Idempotency-Key": f"{self.tenant}-{self.n}"})
        if lease is None:
            return
        self.call("get", "GET", f"/api/v1/leases/{lease['id']}")
        self.call("list", "GET", "/api/v1/leases?page_size=20")
        self.call("delete", "DELETE", f"/api/v1/leases/{lease['id']}", expect=(202,))

    def step(self) -> None:
        """The next request of the client's life (create, get, list, delete), one at a time."""
        if self.lease is None:
            self.n += 1
            body = {"container-url": IMAGE, "tenancy": self.tenant, "gpus": self.rng.choice(SIZES)}
            lease = self.call("create", "POST", "/api/v1/containers", body, expect=(202,),
                              **{"Idempotency-Key": f"{self.tenant}-open-{self.n}"})
            self.lease, self.stage = (lease["id"] if lease else None), 1
        elif self.stage == 1:
            self.call("get", "GET", f"/api/v1/leases/{self.lease}")
            self.stage = 2
        elif self.stage == 2:
            self.call("list", "GET", "/api/v1/leases?page_size=20")
            self.stage = 3
        else:
            self.call("delete", "DELETE", f"/api/v1/leases/{self.lease}", expect=(202,))
            self.lease = None

    def me(self) -> None:
        self.call("me", "GET", "/api/v1/me")

    def health(self) -> None:
        self.call("health", "GET", "/healthz")


def _round(clients: list[Client], work: str, seconds: float, warmup: float) -> tuple[float, float, dict]:
    """The clients run `work` in a loop; returns the measured window (start, end) after `warmup`, and
    the CPU seconds the server and the database spent in it (`cpu_seconds`). Only requests that finish
    inside it count (not those in flight when it closes)."""
    stop = threading.Event()

    def run(client: Client) -> None:
        while not stop.is_set():
            getattr(client, work)()

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    time.sleep(warmup)
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    time.sleep(seconds)
    ended = time.perf_counter()
    cpu_after = cpu_seconds()
    stop.set()
    for t in threads:
        t.join()
    return started, ended, {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}


SERVER_PID: int | None = None  # the web server's process (main sets it), for cpu_seconds


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system, Linux /proc) used so far by the web server's processes (`web`) and
    by PostgreSQL's (`db`: its backends, WAL writer, autovacuum; where it runs on this host). What a
    request costs in CPU drifts less than how many are answered a second on a machine whose other
    tenants take a varying share of its cores. A process that ends inside a window is not counted:
    with a connection per request (DATABASE_POOL=false) most of the database's CPU goes uncounted.
    Empty elsewhere."""
    if not sys.platform.startswith("linux") or SERVER_PID is None:
        return {}
    from console.webserver import worker_pids

    tick = os.sysconf("SC_CLK_TCK")
    out = {"web": 0.0, "db": 0.0}
    web = {SERVER_PID, *worker_pids(SERVER_PID)}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                name, _, rest = stat.read().rpartition(")")
        except OSError:
            continue  # gone meanwhile
        kind = "web" if int(entry.name) in web else "db" if name.endswith("(postgres") else None
        if kind:
            fields = rest.split()
            out[kind] += (int(fields[11]) + int(fields[12])) / tick
    return out


class Measured:
    """One kind of closed-loop work's requests inside its measured windows."""

    def __init__(self):
        self.seconds = 0.0
        self.samples: list[tuple[str, float, float]] = []
        self.cpu: dict[str, float] = {}

    def add(self, clients: list[Client], window: tuple[float, float, dict]) -> None:
        started, ended, cpu = window
        self.seconds += ended - started
        for kind, used in cpu.items():
            self.cpu[kind] = self.cpu.get(kind, 0.0) + used
        self.samples += [x for c in clients for x in c.samples if started <= x[1] <= ended]
        for c in clients:
            c.samples.clear()

    @property
    def rate(self) -> float:
        return len(self.samples) / self.seconds if self.seconds else 0.0

    def cpu_ms_per_request(self, kind: str) -> float:
        return self.cpu.get(kind, 0.0) / len(self.samples) * 1000 if self.samples else 0.0

    @property
    def latencies(self) -> list[float]:
        return sorted(x[2] for x in self.samples)

    def of_kind(self, kind: str) -> list[float]:
        return sorted(x[2] for x in self.samples if x[0] == kind)


def _interleaved(clients: list[Client], works: tuple[str, ...], seconds: float, slices: int) -> list[Measured]:
    """Each work for `seconds` in all, measured in `slices` turns taken in rotation (the mix, then
    the baseline, then the mix again...): a machine whose speed drifts during the run (this one's
    does, by a third within minutes) slows both figures alike, and their ratio stays comparable."""
    measured = [Measured() for _ in works]
    for turn in range(slices):
        for work, into in zip(works, measured, strict=True):
            into.add(clients, _round(clients, work, seconds / slices, WARMUP_S if turn == 0 else SETTLE_S))
    return measured


def _open_round(clients: list[Client], rate: float, seconds: float) -> tuple[list[float], float]:
    """Requests arriving at `rate` per second (Poisson), whatever the answers' pace, each taken by a
    free client in turn; a request's latency counts from when it was due, so waiting for a free
    client counts too (no coordinated omission). Returns the latencies after the warm-up and the
    rate answered."""
    import queue

    rng = random.Random(7)
    due, at = queue.Queue(), 0.0
    while at < WARMUP_S + seconds:
        at += rng.expovariate(rate)
        due.put(at)
    latencies: list[float] = []
    answered = [0]
    lock = threading.Lock()
    started = time.perf_counter()

    def run(client: Client) -> None:
        while True:
            try:
                at = due.get_nowait()
            except queue.Empty:
                return
            delay = started + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            client.step()
            if at >= WARMUP_S:
                with lock:
                    latencies.append(time.perf_counter() - started - at)
                    answered[0] += 1

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started - WARMUP_S
    return sorted(latencies), answered[0] / elapsed


def _auth_us(token: str, n: int = 2000) -> float:
    from tenants.tokens import api_token_authenticate

    api_token_authenticate(token)
    started = time.perf_counter()
    for _ in range(n):
        assert api_token_authenticate(token) is not None
    return (time.perf_counter() - started) / n * 1e6


MIX = ("create", "get", "list", "delete")


def _clients_per_worker(server_pid: int, port: int) -> list[int]:
    """The clients' connections each web worker holds (Linux): the workers share them, or one works
    while the others idle (uvicorn's shared socket gave all 32 to one worker)."""
    if not sys.platform.startswith("linux"):
        return []
    from console.webserver import sockets_by_process, worker_pids

    return sorted(sockets_by_process(worker_pids(server_pid), port, "01").values(), reverse=True)


def _by_kind(mix: Measured) -> dict[str, float]:
    """Each kind of request's p50 and p99 in the mix round: which kind the tail is made of."""
    out = {}
    for kind in MIX:
        values = mix.of_kind(kind)
        out[f"{kind}_p50_ms"] = round(_pct(values, 0.5), 1)
        out[f"{kind}_p99_ms"] = round(_pct(values, 0.99), 1)
    return out


def _cpu_figures(mix: Measured, base: Measured) -> dict[str, float]:
    """What a request of the mix and one of the baseline cost the server and the database in CPU, and
    the ratio of the two totals (the mix's cost in baseline requests: comparable across machines)."""
    if not mix.cpu:
        return {}
    out = {}
    for prefix, measured in (("", mix), ("baseline_", base)):
        for kind in ("web", "db"):
            out[f"{prefix}{kind}_cpu_ms_per_req"] = round(measured.cpu_ms_per_request(kind), 2)
    out["cpu_ms_per_req"] = round(out["web_cpu_ms_per_req"] + out["db_cpu_ms_per_req"], 2)
    base_total = out["baseline_web_cpu_ms_per_req"] + out["baseline_db_cpu_ms_per_req"]
    out["cpu_to_baseline"] = round(out["cpu_ms_per_req"] / base_total, 2) if base_total else 0.0
    return out


def _placed() -> tuple[int, int]:
    """The run's leases that were placed, and those that never were (the fleet was full)."""
    from tenants.models import Lease

    placed = Lease.objects.filter(placed_at__isnull=False).count()
    return placed, Lease.objects.count() - placed


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0.0


def main() -> None:
    server_url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    url = _create_db(server_url)
    board = tempfile.mkdtemp(prefix="bench-web-connections-")
    proc = None
    try:
        _setup_django(url)
        tokens = _seed(SERVERS, CLIENTS)
        auth_us = _auth_us(tokens[0][1])
        from django.db import connections

        from console.webserver import out_of_turn_on_board

        connections.close_all()
        port = _free_port()
        proc = _start_server(url, port, board)
        global SERVER_PID
        SERVER_PID = proc.pid
        clients = [Client(port, tenant, token, i) for i, (tenant, token) in enumerate(tokens)]
        works = ("life", "me", *(("health",) if os.environ.get("BENCH_FLOOR") else ()))
        mix, base, *floors = _interleaved(clients, works, SECONDS, SLICES)
        rate, latencies = mix.rate, mix.latencies
        baseline, base_latencies = base.rate, base.latencies
        kinds = _by_kind(mix)
        spread = _clients_per_worker(proc.pid, port)
        out_of_turn = out_of_turn_on_board(board)
        open_latencies, open_answered = _open_round(clients, OPEN_RATE, SECONDS) if OPEN_RATE > 0 else ([], 0.0)
        floor = floors[0].rate if floors else None
        errors = sum(c.unexpected for c in clients)
        doubles = double_allocations()
        placed, never_placed = _placed()
        figures = {
            "api_req_per_s_c32": round(rate, 1),
            "api_p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else 0.0,
            "api_p99_ms": round(_pct(latencies, 0.99), 2),
            "api_errors": errors,
            "double_allocations": doubles,
            "leases_placed": placed,
            "leases_never_placed": never_placed,
            "auth_us_per_request": round(auth_us, 1),
            "baseline_req_per_s_c32": round(baseline, 1),
            "baseline_p50_ms": round(statistics.median(base_latencies) * 1000, 2) if base_latencies else 0.0,
            "api_to_baseline_c32": round(rate / baseline, 3) if baseline else 0.0,
            "api_mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else 0.0,
            "open_rate_req_per_s": OPEN_RATE,
            "open_answered_req_per_s": round(open_answered, 1),
            "open_p50_ms": round(statistics.median(open_latencies) * 1000, 2) if open_latencies else 0.0,
            "open_p99_ms": round(_pct(open_latencies, 0.99), 2),
            **kinds,
            **_cpu_figures(mix, base),
            "clients_per_worker": spread,
            "connections_out_of_turn": out_of_turn,
            **({"floor_healthz_req_per_s_c32": round(floor, 1)} if floor is not None else {}),
            "servers": SERVERS, "clients": CLIENTS, "seconds": SECONDS,
        }
        print(f"API mix (create, get, list, delete): {rate:.1f} req/s, p50 {figures['api_p50_ms']} ms, "
              f"p99 {figures['api_p99_ms']} ms, {errors} unexpected answers")
        print(f"  (32 clients that each wait for their answer: mean latency = 32 / rate = "
              f"{CLIENTS / rate * 1000 if rate else 0:.0f} ms, measured {figures['api_mean_ms']} ms)")
        print("  by kind (p50 / p99 ms): " + ", ".join(
            f"{kind} {kinds[f'{kind}_p50_ms']} / {kinds[f'{kind}_p99_ms']}" for kind in MIX))
        if OPEN_RATE > 0:
            print(f"the same mix arriving at {OPEN_RATE:.0f} req/s: p50 {figures['open_p50_ms']} ms, "
                  f"p99 {figures['open_p99_ms']} ms ({figures['open_answered_req_per_s']} req/s answered)")
        print(f"clients per web worker: {spread}")
        print(f"baseline GET /api/v1/me: {baseline:.1f} req/s; token authentication {auth_us:.1f} µs")
        if "cpu_ms_per_req" in figures:
            print(f"CPU per request (web + database): mix {figures['web_cpu_ms_per_req']} + "
                  f"{figures['db_cpu_ms_per_req']} ms, baseline {figures['baseline_web_cpu_ms_per_req']} + "
                  f"{figures['baseline_db_cpu_ms_per_req']} ms; mix / baseline {figures['cpu_to_baseline']}")
        print(f"double allocations: {doubles}; creates placed: {placed}, never placed (fleet full): {never_placed}")
        print(json.dumps(figures))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        from django.db import connections

        connections.close_all()
        _drop_db(server_url)
        shutil.rmtree(board, ignore_errors=True)


if __name__ == "__main__":
    main()
