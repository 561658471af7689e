"""Operator UI benchmark: the fleet map's server time, size and queries; websocket fan-out; paint and
live updates in headless Chromium.

Run: `.venv/bin/python bench/ui.py [--quick]` (a scratch SQLite database under a temporary folder;
REDIS_URL for the fan-out figure, default redis://127.0.0.1:6379/6). Prints readable figures, then as
the last line one JSON object:

* `fleet_render_ms_100`, `fleet_render_ms_1000`: server time of GET / (median of 5), 100 and 1,000
  servers (8 GPUs each, about half of them leased; target < 300 ms at 1,000).
* `fleet_html_kib_1000`: size of that page (target ≤ 350 KiB).
* `fleet_queries_100`, `fleet_queries_1000`: SQL queries per render (must be equal).
* `ws_fanout_p95_ms_50`: a change committed by another process → the tile's fragment received by all
  of 50 websocket clients of one daphne on the Redis channel layer (p95 over 20 changes; < 250 ms).
* `map_paint_ms_1000`, `map_dom_elements_1000`: Chromium parses, lays out and paints the 1,000-server
  page (≤ 500 ms, ≤ 10,000 elements).
* `remote_change_p95_ms`: a change committed by this process painted in a browser (p95 of 20; ≤ 1,000 ms).
* `cell_updates_apply_p95_ms`, `max_frame_gap_ms`: 1,000 cell updates a second (ten messages of 100
  tiles, as the consumer coalesces them) applied for 5 s: p95 of message → painted, and the longest
  gap between frames (≤ 50 ms each); `cell_updates_work_p95_ms`: the script's time per frame.
  BENCH_DATABASE_URL=postgres://… runs it on PostgreSQL (`--db` that URL again reuses the fleet).
* `lease_page_ms`: server time of GET /leases/<id>/ (median of 5) for a booted lease with all eight
  boot phases and its state history; `timeline_paint_ms`: Chromium parses, lays out and paints that
  page's main part (median of 3). `--lease-only` measures just these two, on a fleet of 10 servers.
* `events_page_ms_1m` (and its parts): the events page over 1,000,000 audit rows, when DATABASE_URL
  names a PostgreSQL server (bench/events_page.py, in its own database; target ≤ 150 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="bench-ui-"))
DB = TMP / "db.sqlite3"
ENV = {
    "DJANGO_SETTINGS_MODULE": "console.settings", "DEBUG": "0", "SECRET_KEY": "bench", "LOG_LEVEL": "WARNING",
    "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver", "DATABASE_URL": f"sqlite:///{DB}", "VAR_DIR": str(TMP),
    "CELERY_BROKER_URL": "memory://",
}
GIVEN_DATABASE_URL = os.environ.get("DATABASE_URL", "")  # PostgreSQL: the events page bench runs there
if os.environ.get("BENCH_DATABASE_URL"):  # e.g. postgres://postgres@127.0.0.1:5432/bench (created if missing)
    ENV["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
os.environ.update(ENV)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-gpu"]


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))] if xs else float("nan")


def setup_django():
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def add_servers(start: int, count: int) -> list:
    from console.audit import Actor
    from fleet.registration import ServerSpec, server_register_from_platform
    from tests.support.demo import lived_in

    actor = Actor.system("bench")
    servers = []
    for i in range(start, start + count):
        server, _ = server_register_from_platform(spec=ServerSpec(
            hostname=f"gpu-{i + 1:05d}", platform="hgx-h100-8", variant="supermicro",
            rack=f"r{i // 16 + 1:03d}", slot=i % 16 + 1), actor=actor)
        servers.append(server)
    lived_in(servers)
    return servers


def measure_render() -> tuple[float, int, int]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from tests.factories import make_user

    client = Client()
    client.force_login(make_user("viewer"))
    times = []
    for _ in range(6):
        t = time.perf_counter()
        with CaptureQueriesContext(connection) as ctx:
            response = client.get("/")
        times.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200
    return statistics.median(times[1:]), len(response.content), len(ctx.captured_queries)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """End a server: SIGTERM, then SIGKILL if it is still closing sockets after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def start_daphne(port: int, redis_url: str | None) -> subprocess.Popen:
    env = dict(os.environ, **ENV, PYTHONPATH=str(ROOT))
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        env.pop("REDIS_URL", None)
    log = open(TMP / f"daphne-{port}.log", "wb")  # noqa: SIM115 (the child writes it until it ends)
    proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                             "console.asgi:application"], env=env, cwd=ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("daphne did not start")


def session_cookie(role: str = "support") -> str:
    from django.test import Client

    from tests.factories import make_user

    client = Client()
    client.force_login(make_user(role))
    return client.cookies["sessionid"].value


def flip_here(server_id: int) -> float:
    from console.audit import Actor
    from fleet import services
    from fleet.models import Server

    s = Server.objects.get(pk=server_id)
    (services.server_cordon if s.state == "active" else services.server_uncordon)(server=s, actor=Actor.system("b"))
    return time.time()


async def fanout(port: int, cookie: str, server_id: int, clients: int, changes: int) -> list[float]:
    import aiohttp

    url = f"ws://127.0.0.1:{port}/ws/fleet/"
    headers = {"Cookie": f"sessionid={cookie}", "Origin": f"http://127.0.0.1:{port}"}
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(url, headers=headers) for _ in range(clients)]
        for ws in sockets:
            await ws.receive_json()  # hello
        key = f"server-{server_id}"
        latencies = []
        for _ in range(changes):
            got: list[float] = []

            async def wait(ws, got=got):
                while True:
                    msg = await ws.receive_json()
                    if msg.get("type") == "fragments" and key in msg["html"]:
                        got.append(time.time())
                        return

            waiters = [asyncio.create_task(wait(ws)) for ws in sockets]
            committed = await asyncio.to_thread(flip_here, server_id)
            await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
            latencies.append((max(got) - committed) * 1000)
            await asyncio.sleep(0.15)
        for ws in sockets:
            await ws.close()
    return latencies


def in_thread(fn, *args):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


PAINT_JS = """async (html) => {
  const doc = new DOMParser().parseFromString(html, 'text/html');
  const main = doc.querySelector('main').innerHTML;
  await new Promise(r => requestAnimationFrame(() => r()));
  const t0 = performance.now();
  document.querySelector('main').innerHTML = main;
  document.body.offsetHeight;
  await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  return [performance.now() - t0, document.getElementsByTagName('*').length];
}"""

APPLY_JS = """async ([tiles, seconds, perMessage, rate]) => {
  const ids = Object.keys(tiles);
  const sock = window.__live.socket();
  const gaps = []; let last = performance.now(); let running = true;
  (function frame(t) { gaps.push(t - last); last = t; if (running) requestAnimationFrame(frame); })(performance.now());
  const lat = []; let i = 0;
  const perSecond = rate / perMessage; const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    const html = {};
    for (let k = 0; k < perMessage; k++) { const id = ids[(i++) % ids.length]; html[id] = tiles[id][i % 2]; }
    const t0 = performance.now();
    sock.onmessage({data: JSON.stringify({type: 'fragments', v: 0, html})});
    await new Promise(r => requestAnimationFrame(() => r()));
    lat.push(performance.now() - t0);
    await new Promise(r => setTimeout(r, Math.max(0, 1000 / perSecond - (performance.now() - t0))));
  }
  running = false;
  lat.sort((a, b) => a - b); gaps.sort((a, b) => a - b);
  return [lat[Math.floor(0.95 * (lat.length - 1))], gaps[gaps.length - 1], lat.length];
}"""


def browser_figures(port: int, server_ids: list[int], tile_variants: dict) -> dict:
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{port}"
    cookie = session_cookie("viewer")
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": base}])
        page = context.new_page()
        page.goto(base + "/")
        page.wait_for_selector("#live-badge.live", timeout=30000)
        html = page.content()
        paints = [page.evaluate(PAINT_JS, html) for _ in range(3)]
        out["map_paint_ms_1000"] = round(statistics.median(p[0] for p in paints), 1)
        out["map_dom_elements_1000"] = int(paints[0][1])
        page.reload()
        page.wait_for_selector("#live-badge.live", timeout=30000)
        # A committed change, painted in this browser.
        page.evaluate("""() => { window.__painted = {}; new MutationObserver(ms => { for (const m of ms)
            for (const n of m.addedNodes) if (n.id) window.__painted[n.id] = Date.now(); })
            .observe(document.getElementById('fleet-map'), {childList: true, subtree: true}); }""")
        latencies = []
        for k in range(20):
            sid = server_ids[k % len(server_ids)]
            page.evaluate("() => { window.__painted = {}; }")
            committed = in_thread(flip_here, sid)  # Playwright's loop runs on this thread
            page.wait_for_function(f"() => window.__painted['server-{sid}']", timeout=10000)
            latencies.append(page.evaluate(f"() => window.__painted['server-{sid}']") - committed * 1000)
            time.sleep(0.2)
        out["remote_change_p95_ms"] = round(p95(latencies), 1)
        page.evaluate(APPLY_JS, [tile_variants, 1, 100, 1000])  # warm-up (first layouts, JIT): not "sustained"
        page.evaluate("() => { window.__live.work = []; }")
        lat, gap, n = page.evaluate(APPLY_JS, [tile_variants, 5, 100, 1000])
        work = sorted(page.evaluate("() => window.__live.work || []"))  # ms of script per frame applying them
        out["cell_updates_work_p95_ms"] = round(work[round(0.95 * (len(work) - 1))], 1) if work else None
        out["cell_updates_apply_p95_ms"] = round(lat, 1)
        out["max_frame_gap_ms"] = round(gap, 1)
        out["cell_update_messages"] = n
        browser.close()
    return out


def booted_lease(server) -> int:
    """A lease that booted on `server`'s 8-GPU partition: every phase measured, its states audited."""
    from django.utils import timezone

    from console.audit import Actor
    from fleet.boot import server_boot_estimate
    from tenants.models import BootPhase, Lease, Tenant
    from tenants.states import LEASE_MACHINE
    from tests.support.demo import hold

    actor = Actor.system("bench")
    tenant, _ = Tenant.objects.get_or_create(name="bench", defaults={"state": "ready"})
    lease = Lease.objects.create(tenant=tenant, image="bench", gpu_count=8, correlation_id="bench-lease")
    Lease.objects.filter(pk=lease.pk).update(allocation=hold(server, 0, holder=f"lease/{lease.pk}", owner="bench"))
    for state in ("placed", "partitioning", "booting", "running"):
        LEASE_MACHINE.transition(lease, state, actor=actor)
    now = timezone.now()
    for seq, (phase, seconds) in enumerate(server_boot_estimate(server, gpus=8, guest_ram_gib=64).phases):
        BootPhase.objects.create(lease=lease, seq=seq, phase=phase, predicted_seconds=seconds, started_at=now,
                                 ended_at=now, duration_s=seconds * 1.07, detail="8 GPU(s)")
    return lease.pk


def measure_lease_page(lease_id: int) -> float:
    from django.test import Client

    from tests.factories import make_user

    client = Client()
    client.force_login(make_user("viewer"))
    times = []
    for _ in range(6):
        t = time.perf_counter()
        assert client.get(f"/leases/{lease_id}/").status_code == 200
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times[1:])


def timeline_paint(port: int, lease_id: int) -> float:
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{port}"
    cookie = session_cookie("viewer")  # before Playwright's loop runs on this thread
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": base}])
        page = context.new_page()
        page.goto(f"{base}/leases/{lease_id}/")
        page.wait_for_selector("#live-badge.live", timeout=30000)
        html = page.content()
        paints = [page.evaluate(PAINT_JS, html)[0] for _ in range(3)]
        browser.close()
    return round(statistics.median(paints), 1)


def untouched_server(servers):
    """A schedulable server with every GPU free (the browser figures cordon and drain some)."""
    from fleet.models import Gpu

    busy = set(Gpu.objects.filter(server__in=servers).exclude(state="free").values_list("server_id", flat=True))
    return next(s for s in servers if s.pk not in busy and s.__class__.objects.get(pk=s.pk).state == "active")


def lease_figures(server) -> dict:
    lease_id = booted_lease(server)
    ms = measure_lease_page(lease_id)
    port = free_port()
    proc = start_daphne(port, None)
    try:
        paint = timeline_paint(port, lease_id)
    finally:
        stop(proc)
    print(f"lease page (8 phases): GET {ms:.0f} ms; Chromium timeline paint {paint} ms")
    return {"lease_page_ms": round(ms, 1), "timeline_paint_ms": paint}


def tile_variants(servers) -> dict:
    """Two renders of each tile (as is, and with its first GPU drained) for the apply benchmark."""
    from console.ui.tiles import render_tile
    from fleet.overview import server_tiles

    variants = {}
    for tile in server_tiles([s.pk for s in servers]):
        a = str(render_tile(tile))
        tile.gpus[0].state = "drained"
        b = str(render_tile(tile))
        variants[f"server-{tile.pk}"] = [a, b]
    return variants


def events_page_figures() -> dict:
    """bench/events_page.py on the given PostgreSQL server (a process of its own: this one is on SQLite)."""
    url = GIVEN_DATABASE_URL or ENV.get("DATABASE_URL", "")  # or the bench's own PostgreSQL (--db)
    if not url.startswith(("postgres://", "postgresql://")):
        print("no PostgreSQL DATABASE_URL: events_page_ms_1m skipped")
        return {}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "events_page.py")], cwd=ROOT, text=True,
                         capture_output=True, env=dict(os.environ, DATABASE_URL=url))
    print(run.stdout.rstrip())
    if run.returncode:
        print(f"events page bench failed:\n{run.stderr[-2000:]}")
        return {}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="300 servers instead of 1,000")
    parser.add_argument("--servers", type=int, default=None)
    parser.add_argument("--db", help="reuse this bench database (its fleet) instead of building one")
    parser.add_argument("--lease-only", action="store_true", help="only lease_page_ms and timeline_paint_ms")
    args = parser.parse_args()
    if args.lease_only:
        setup_django()
        print(json.dumps(lease_figures(add_servers(0, 10)[8])))
        return
    total = args.servers or (300 if args.quick else 1000)
    if args.db:  # a fleet an earlier run built (its folder is printed): skips the build and the 100 figures
        url = args.db if "://" in args.db else f"sqlite:///{args.db}"  # or a PostgreSQL URL
        ENV["DATABASE_URL"] = os.environ["DATABASE_URL"] = url
    setup_django()
    result: dict = {}
    t = time.perf_counter()
    if args.db:
        from fleet.models import Server

        servers = list(Server.objects.order_by("pk"))
        total = len(servers)
    else:
        print(f"(bench database {DB})")
        servers = add_servers(0, 100)
        ms, size, queries = measure_render()
        result.update(fleet_render_ms_100=round(ms, 1), fleet_queries_100=queries)
        print(f"100 servers: GET / {ms:.0f} ms, {size / 1024:.0f} KiB, {queries} queries")
        servers += add_servers(100, total - 100)
        print(f"(fleet of {total} built in {time.perf_counter() - t:.0f} s)")
        from django.db import connection

        if connection.vendor == "postgresql":  # fresh tables: plan with statistics, as autovacuum would
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
    ms, size, queries = measure_render()
    result.update(fleet_render_ms_1000=round(ms, 1), fleet_html_kib_1000=round(size / 1024, 1),
                  fleet_queries_1000=queries)
    print(f"{total} servers: GET / {ms:.0f} ms, {size / 1024:.0f} KiB, {queries} queries")

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/6")
    try:
        import redis

        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
    except Exception as exc:
        print(f"no Redis at {redis_url} ({exc}): ws_fanout skipped")
        redis_url = None
    if redis_url:
        port = free_port()
        proc = start_daphne(port, redis_url)
        try:
            lat = asyncio.run(fanout(port, session_cookie(), servers[7].pk, 50, 20))
            result["ws_fanout_p95_ms_50"] = round(p95(lat), 1)
            print(f"fan-out to 50 sockets (Redis): p50 {statistics.median(lat):.0f} ms, p95 {p95(lat):.0f} ms")
        finally:
            stop(proc)

    port = free_port()
    proc = start_daphne(port, None)
    try:
        variants = tile_variants(servers[:300])
        figures = browser_figures(port, [s.pk for s in servers[8:40]], variants)
    finally:
        stop(proc)
    result.update(figures)
    result.update(lease_figures(untouched_server(servers[40:])))
    print(f"Chromium: map paint {figures['map_paint_ms_1000']} ms ({figures['map_dom_elements_1000']} elements), "
          f"remote change p95 {figures['remote_change_p95_ms']} ms, 1,000 cell updates/s: apply p95 "
          f"{figures['cell_updates_apply_p95_ms']} ms, longest frame gap {figures['max_frame_gap_ms']} ms")
    result.update(events_page_figures())
    result["servers"] = total
    print(json.dumps(result))


if __name__ == "__main__":
    main()
