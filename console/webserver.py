"""The web server (the Procfile's `web`): uvicorn, WEB_WORKERS processes that share one listening
socket, each accepting a connection only while it holds no more connections than any other worker.

Keep-alive clients stay on the worker that accepted them, so how connections are first handed out
decides how the load is shared for as long as they live. Uvicorn's own workers each accept
everything queued when they wake: clients that connect together all land on one process (under
bench/api.py all 32 on one of two, the other idle). A socket per worker in a SO_REUSEPORT group
spreads them by a hash of their addresses, not by load: 32 connections came out between [16, 16]
and [25, 7], and the clients of the fuller worker waited up to three times as long (bench/api.py's
`clients_per_worker`, `api_p99_ms`). A proxy in front that keeps a few upstream connections open
meets the same lottery.

Here each worker accepts one connection at a time, and before each it compares the connections it
holds with those of the other workers on a board (a small file per worker in a directory the
server makes, WEB_CONNECTION_BOARD); a worker holding more waits a moment (DEFER_S) and lets a less
loaded one take it. A connection is never left waiting on a worker that does not come: after
PATIENCE_S any worker takes it.

Run: `python -m console.webserver --host 127.0.0.1 --port 8000 --workers 2` (one worker: uvicorn's
usual server).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import uvicorn
from uvicorn.supervisors import multiprocess

APP = "console.asgi:application"
BOARD_ENV = "WEB_CONNECTION_BOARD"
DEFER_S = 0.002  # a worker with more connections looks again after this
PATIENCE_S = 0.05  # and takes the connection anyway after this (the less loaded one may be stuck)
PUBLISH_S = 0.1  # each worker writes its count at least this often (closed connections)
logger = logging.getLogger("uvicorn.error")


class ConnectionBoard:
    """Each worker's open connections, and how many it took out of turn (patience run out while another
    held fewer): a file per worker, named by its process id, in `directory`."""

    def __init__(self, directory: str | Path, name: str | None = None):
        self.directory = Path(directory)
        self.name = name or str(os.getpid())
        self._fd = os.open(self.directory / self.name, os.O_RDWR | os.O_CREAT, 0o600)  # named by a process id

    def publish(self, held: int, out_of_turn: int = 0) -> None:
        os.pwrite(self._fd, b"%12d %12d" % (held, out_of_turn), 0)

    def others(self) -> dict[str, int]:
        """The other live workers' connection counts (a file whose process is gone is removed)."""
        return {name: held for name, (held, _) in _entries(self.directory, but=self.name).items()}

    def least_loaded(self, held: int, out_of_turn: int = 0) -> bool:
        """Whether no other worker holds fewer connections than `held` (ties: both may take it)."""
        self.publish(held, out_of_turn)
        return all(held <= theirs for theirs in self.others().values())

    def close(self) -> None:
        os.close(self._fd)
        (self.directory / self.name).unlink(missing_ok=True)


def _entries(directory: str | Path, but: str | None = None) -> dict[str, tuple[int, int]]:
    """Each live worker's (connections held, taken out of turn) on the board in `directory`."""
    out = {}
    for entry in os.scandir(directory):
        if entry.name == but:
            continue
        if not _alive(entry.name):
            Path(entry.path).unlink(missing_ok=True)
            continue
        try:
            held, out_of_turn = (Path(entry.path).read_bytes() or b"0 0").split()
            out[entry.name] = int(held), int(out_of_turn)
        except (OSError, ValueError):
            continue  # being written or just removed: not counted this time
    return out


def _alive(name: str) -> bool:
    """Whether `name` is the id of a live process (any other file on the board is no worker)."""
    if not name.isdigit():
        return False
    try:
        os.kill(int(name), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class Acceptor:
    """A worker's accept loop on the shared socket: one connection per turn, least loaded first.
    Stands in uvicorn's `Server.servers` (close, wait_closed)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol_factory, held, board):
        self.loop, self.sock, self.protocol_factory, self.board = loop, sock, protocol_factory, board
        self._held = held  # connections uvicorn holds in this worker
        self.setting_up = 0  # accepted, not yet handed to a protocol
        self.out_of_turn = 0  # accepted after PATIENCE_S although another worker held fewer
        self.closed = False
        self._setups: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self._waiting_since = self._last_deferral = 0.0
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._ready)
        self._publish()

    def held(self) -> int:
        return self._held() + self.setting_up

    def _ready(self) -> None:
        now = time.monotonic()
        if now - self._last_deferral > 4 * DEFER_S:  # a new connection, not the one deferred just now
            self._waiting_since = now
        in_turn = self.board.least_loaded(self.held(), self.out_of_turn)
        if not in_turn and now - self._waiting_since < PATIENCE_S:
            self._last_deferral = now
            self.loop.remove_reader(self.sock.fileno())
            self.loop.call_later(DEFER_S, self._resume)
            return
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:  # out of file descriptors, say: the connection stays queued
            logger.error("accept failed: %s", exc)
            return
        conn.setblocking(False)
        self.setting_up += 1
        self.out_of_turn += not in_turn
        self.board.publish(self.held(), self.out_of_turn)
        task = self.loop.create_task(self._serve(conn))
        self._setups.add(task)
        task.add_done_callback(self._setups.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn)
        except Exception:
            logger.exception("a connection could not be set up")
            conn.close()
        finally:
            self.setting_up -= 1

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)

    def _publish(self) -> None:
        if not self.closed:
            self.board.publish(self.held(), self.out_of_turn)
            self.loop.call_later(PUBLISH_S, self._publish)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.board.close()

    async def wait_closed(self) -> None:
        return None


class LeastConnectionsServer(uvicorn.Server):
    """A worker's server: uvicorn's, with an Acceptor on the shared socket instead of its listener."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=[])  # the application and its state; no listener of its own
        if not self.started:
            return
        loop, config = asyncio.get_running_loop(), self.config

        def create_protocol(_loop=None):
            return config.http_protocol_class(config=config, server_state=self.server_state,
                                              app_state=self.lifespan.state, _loop=_loop)

        board = ConnectionBoard(os.environ[BOARD_ENV])
        for sock in sockets or []:
            sock.listen(config.backlog)
            self.servers.append(Acceptor(loop, sock, create_protocol,
                                         lambda: len(self.server_state.connections), board))


class LeastConnectionsWorker(multiprocess.Process):
    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = LeastConnectionsServer(config=self.config)
        return self._server


def serve(*, host: str, port: int, workers: int) -> None:
    config = uvicorn.Config(APP, host=host, port=port, workers=workers, lifespan="off", access_log=False)
    if workers <= 1:
        uvicorn.Server(config).run()
        return
    made_board = not os.environ.get(BOARD_ENV)
    board = os.environ.get(BOARD_ENV) or tempfile.mkdtemp(prefix="web-connections-")
    os.environ[BOARD_ENV] = board  # the workers are spawned with this environment
    sock = config.bind_socket()  # one socket, bound here and shared by the workers
    sock.listen(config.backlog)  # connections queue while the workers start
    # uvicorn's supervisor (health checks, restarts, signals), with workers made through the module's
    # `Process`.
    multiprocess.Process = LeastConnectionsWorker
    try:
        multiprocess.Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        if made_board:
            shutil.rmtree(board, ignore_errors=True)


def worker_pids(server_pid: int) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server_pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if b"spawn_main" in _read(f"/proc/{p}/cmdline")]


def workers_on_board(board: str | Path) -> int:
    """How many workers have started accepting (their file is on the board)."""
    return sum(1 for entry in os.scandir(board) if _alive(entry.name))


def out_of_turn_on_board(board: str | Path) -> int:
    """How many connections the live workers took out of turn (a worker with fewer did not come within
    PATIENCE_S: stuck, or not scheduled on a busy machine)."""
    return sum(out_of_turn for _, out_of_turn in _entries(board).values())


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
