"""The Procfile's web server: a socket per worker in one SO_REUSEPORT group, so that clients that
connect together are spread over the workers (uvicorn's shared socket gave all 32 bench clients to
one worker), and a second server on a taken port fails instead of joining the group."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from console.webserver import port_is_free, sockets_by_process, worker_pids

pytestmark = [
    pytest.mark.anydb,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; SO_REUSEPORT spreads on Linux"),
]
ROOT = Path(__file__).resolve().parents[2]
WEB = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "DEBUG": "", "SECRET_KEY": "test-only-secret", "ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "LOG_LEVEL": "WARNING"}


def _start(tmp_path, port: int, workers: int = 2) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "console.webserver", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers)],
        cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_until_healthy(proc: subprocess.Popen, port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the web server did not answer /healthz")


def _listening(port: int, pids: list[int]) -> list[int]:
    return list(sockets_by_process(pids, port, "0A").values())


def test_the_procfile_runs_this_server():
    assert "-m console.webserver" in WEB and "--workers ${WEB_WORKERS:-2}" in WEB


def test_a_port_with_a_listener_is_not_free():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
    assert port_is_free("127.0.0.1", port)


def test_each_worker_listens_and_clients_that_connect_together_are_spread(tmp_path):
    port = _free_port()
    proc = _start(tmp_path, port)
    clients = []
    try:
        _wait_until_healthy(proc, port)
        workers = worker_pids(proc.pid)
        assert len(workers) == 2
        assert _listening(port, [*workers, proc.pid]) == [1, 1, 0]  # one socket per worker, none in the parent
        # 32 keep-alive clients that connect at once, as bench/api.py's do
        for _ in range(32):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.connect()
            clients.append(conn)
        for conn in clients:
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b'{"ok": true}'
        per_worker = list(sockets_by_process(workers, port, "01").values())
        assert sum(per_worker) == 32
        # Spread by a hash of the addresses: both workers take some (all on one: p = 2 / 2**32).
        assert min(per_worker) >= 4, per_worker
    finally:
        for conn in clients:
            conn.close()
        proc.terminate()
        proc.wait(30)


def test_a_second_server_on_a_taken_port_fails_instead_of_sharing_it(tmp_path):
    port = _free_port()
    first = _start(tmp_path, port)
    try:
        _wait_until_healthy(first, port)
        second = _start(tmp_path, port)
        output, _ = second.communicate(timeout=60)
        assert second.returncode == 3, output
        assert "address is in use" in output
        assert _listening(port, worker_pids(first.pid)) == [1, 1]  # the first's, untouched
    finally:
        first.terminate()
        first.wait(30)
