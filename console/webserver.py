"""The web server (the Procfile's `web`): uvicorn, WEB_WORKERS processes, each listening on a socket of
its own in one SO_REUSEPORT group.

Uvicorn's `--workers` binds one socket in the parent and every worker accepts from it. The worker that
wakes first accepts everything queued, so clients that connect together land on one process and stay
there over keep-alive: under bench/api.py all 32 clients were on one of the two workers, and the
other sat idle (`ss -tnp`), so the second worker added nothing. With a socket per worker in one
SO_REUSEPORT group, Linux spreads new connections across the workers by a hash of their addresses.

Run: `python -m console.webserver --host 127.0.0.1 --port 8000 --workers 2`. Where SO_REUSEPORT does not
exist, or with one worker, it is uvicorn's usual single socket. macOS accepts the group but hands its
connections to one socket, no worse than a shared one. The spread is by hash, not by load: 32
connections came out between [16, 16] and [25, 7] (bench/api.py's `clients_per_worker`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

APP = "console.asgi:application"
logger = logging.getLogger("uvicorn.error")


def reuse_port_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket in the SO_REUSEPORT group of host:port."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port. A plain bind (no SO_REUSEPORT) fails on a port that
    another server holds, even one in a SO_REUSEPORT group; without this check a second server of the
    same user would join the first one's group and take half its connections."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the workers: TIME_WAIT is no holder
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class ReusePortServer(uvicorn.Server):
    """A worker's server: it binds its own socket in the group instead of taking the parent's."""

    async def startup(self, sockets=None) -> None:
        try:
            own = reuse_port_socket(self.config.host, self.config.port, self.config.backlog)
        except OSError as exc:
            logger.error("cannot listen on %s:%s: %s", self.config.host, self.config.port, exc)
            sys.exit(STARTUP_FAILURE)
        await super().startup(sockets=[own])


class ReusePortWorker(multiprocess.Process):
    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = ReusePortServer(config=self.config)
        return self._server


def serve(*, host: str, port: int, workers: int) -> None:
    config = uvicorn.Config(APP, host=host, port=port, workers=workers, lifespan="off", access_log=False)
    if workers <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.Server(config).run()
        return
    if not port_is_free(host, port):
        logger.error("cannot listen on %s:%s: the address is in use", host, port)
        sys.exit(STARTUP_FAILURE)
    # uvicorn's supervisor (health checks, restarts, signals) with workers that each bind their own
    # socket: the parent passes none, and makes its workers through the module's `Process`.
    multiprocess.Process = ReusePortWorker
    multiprocess.Multiprocess(config, sockets=[]).run()


def worker_pids(server_pid: int) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server_pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if b"spawn_main" in _read(f"/proc/{p}/cmdline")]


def sockets_by_process(pids: list[int], port: int, state: str) -> dict[int, int]:
    """How many of this host's IPv4 TCP sockets with local port `port` in `state` (`01` established,
    `0A` listening) each process holds (Linux, from /proc): a check that the workers share the load."""
    inodes = set()
    for line in _read("/proc/net/tcp").decode().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    held = {}
    for pid in pids:
        held[pid] = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            held[pid] += target.startswith("socket:[") and target[8:-1] in inodes
    return held


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m console.webserver", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    serve(host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()
