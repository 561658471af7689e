"""StreamSupervisor: desired set, per-key order, backoff, removal, callback errors; and over real gRPC."""

from __future__ import annotations

import asyncio
import random
import threading
from functools import partial

import pytest
from asgiref.sync import sync_to_async

from hardware.agent_aio import AsyncAgentStreams
from hardware.exceptions import AgentUnavailable
from hardware.stream_supervisor import StreamSupervisor
from hardware.types import HealthKind
from simulator.agent import serve_sim_host
from simulator.clock import SimClock
from simulator.host import SimHost
from tests.simulator.support import FAST

pytestmark = pytest.mark.timeout(60)


class Recording(StreamSupervisor):
    """Records every backoff it chooses (jitter off in these tests, so they are exact)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("jitter", 0.0)
        super().__init__(*args, **kwargs)
        self.delays: list[float] = []

    def _delay(self, attempt: int) -> float:
        delay = super()._delay(attempt)
        self.delays.append(delay)
        return delay


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def items(values, *, then_hold: bool = True, closed: list | None = None):
    """A stream: the values, then (by default) open until cancelled."""
    try:
        for v in values:
            yield v
            await asyncio.sleep(0)
        if then_hold:
            await asyncio.Event().wait()
    finally:
        if closed is not None:
            closed.append(True)


async def test_each_key_gets_its_items_in_order_while_keys_run_concurrently():
    got: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    rng = random.Random(7)

    async def record(key, item):
        await asyncio.sleep(rng.random() / 1000)  # callbacks finish out of step across keys
        got[key].append(item)

    async with StreamSupervisor(record) as sup:
        await sup.set_desired({k: partial(items, range(50)) for k in got})
        await until(lambda: all(len(v) == 50 for v in got.values()))
        assert all(v == list(range(50)) for v in got.values())
        assert {k: (s.connects, s.events, s.handled, s.connected) for k, s in sup.stats.items()} == {
            k: (1, 50, 50, True) for k in got
        }
        assert sup.connected == 3


async def test_a_slow_callback_does_not_stop_the_stream_being_read_up_to_the_queue():
    release = asyncio.Event()

    async def slow(key, item):
        await release.wait()

    async with StreamSupervisor(slow, queue_size=5) as sup:
        await sup.set_desired({"k": partial(items, range(20))})
        # The handler holds item 0; five wait in the queue; the reader holds the seventh.
        await until(lambda: sup.stats["k"].events == 7)
        await asyncio.sleep(0.05)
        assert sup.stats["k"].events == 7 and sup.stats["k"].pending == 7
        release.set()
        await until(lambda: sup.stats["k"].handled == 20)


async def test_a_dropping_stream_is_reopened_with_exponential_backoff_up_to_the_cap():
    opened: list[float] = []

    async def drops():
        opened.append(asyncio.get_running_loop().time())
        yield "hello"
        raise AgentUnavailable("agent went away")

    got = []
    sup = Recording(lambda k, i: got.append(i), backoff_s=0.01, backoff_max_s=0.04, healthy_after_s=60)
    await sup.set_desired({"k": drops})
    await until(lambda: len(opened) >= 5)
    stats = sup.stats["k"]
    await sup.stop()
    assert sup.delays[:4] == [0.01, 0.02, 0.04, 0.04]
    assert all(b - a >= d * 0.9 for a, b, d in zip(opened, opened[1:], sup.delays, strict=False))
    assert stats.failures >= 4 and stats.connects >= 5 and "agent went away" in stats.last_error
    assert got[:4] == ["hello"] * 4  # a sync callback


async def test_a_stream_that_lived_long_enough_starts_the_backoff_over():
    async def drops():
        yield 1
        raise AgentUnavailable("gone")

    sup = Recording(lambda k, i: None, backoff_s=0.01, healthy_after_s=0.0)
    await sup.set_desired({"k": drops})
    await until(lambda: len(sup.delays) >= 3)
    await sup.stop()
    assert sup.delays[:3] == [0.01, 0.01, 0.01]


async def test_a_factory_that_raises_is_a_failure_and_retried():
    calls = []

    def factory():
        calls.append(1)
        if len(calls) < 3:
            raise AgentUnavailable("not yet")
        return items([1, 2])

    got = []
    async with Recording(lambda k, i: got.append(i), backoff_s=0.001) as sup:
        await sup.set_desired({"k": factory})
        await until(lambda: got == [1, 2])
        assert (sup.stats["k"].failures, sup.stats["k"].connects) == (2, 1)


async def test_removing_a_key_cancels_and_closes_its_stream_and_keeps_the_others():
    closed_a, closed_b = [], []
    async with StreamSupervisor(lambda k, i: None) as sup:
        await sup.set_desired({"a": partial(items, [1], closed=closed_a), "b": partial(items, [1], closed=closed_b)})
        await until(lambda: sup.connected == 2)
        await sup.set_desired({"b": partial(items, [1], closed=closed_b)})
        assert closed_a == [True] and closed_b == []  # set_desired returns once the stream is closed
        assert sup.keys == ["b"] and sup.stats["b"].connects == 1  # a new factory: the same stream
    assert closed_b == [True]


async def test_callback_errors_are_counted_and_do_not_end_the_stream(caplog):
    got = []

    def record(key, item):
        if item == 2:
            raise ValueError("bad item")
        got.append(item)

    async with StreamSupervisor(record) as sup:
        await sup.set_desired({"k": partial(items, [1, 2, 3])})
        await until(lambda: got == [1, 3])
        stats = sup.stats["k"]
        assert (stats.connects, stats.failures, stats.handled, stats.callback_errors) == (1, 0, 2, 1)
    assert "bad item" in caplog.text


async def test_restart_on_end_false_leaves_a_finished_stream_finished():
    opened = []

    def boot():
        opened.append(1)
        return items(["firmware", "kernel", "ready"], then_hold=False)

    got = []
    async with StreamSupervisor(lambda k, i: got.append(i), restart_on_end=False, backoff_s=0.001) as sup:
        await sup.set_desired({"vm-1": boot})
        await until(lambda: sup.stats["vm-1"].finished)
        await asyncio.sleep(0.02)
        assert opened == [1] and got == ["firmware", "kernel", "ready"]
        assert (sup.stats["vm-1"].ends, sup.stats["vm-1"].connected) == (1, False)


async def test_stop_cancels_everything_and_refuses_new_streams():
    closed = []
    in_callback = asyncio.Event()

    async def stuck(key, item):
        in_callback.set()
        await asyncio.Event().wait()

    sup = StreamSupervisor(stuck)
    await sup.set_desired({k: partial(items, [1, 2], closed=closed) for k in range(3)})
    await in_callback.wait()
    await sup.stop()
    assert closed == [True] * 3 and sup.keys == []
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("stream:")]
    with pytest.raises(RuntimeError, match="stopped"):
        await sup.set_desired({"x": partial(items, [])})


async def test_sync_to_async_callbacks_keep_per_key_order_on_one_thread():
    """The console's shape: a blocking (database) function wrapped in asgiref's sync_to_async."""
    seen: dict[int, list[int]] = {k: [] for k in range(4)}
    threads = set()

    def record(key, item):
        threads.add(threading.get_ident())
        seen[key].append(item)

    async with StreamSupervisor(sync_to_async(record)) as sup:
        await sup.set_desired({k: partial(items, range(20)) for k in seen})
        await until(lambda: all(len(v) == 20 for v in seen.values()))
    assert all(v == list(range(20)) for v in seen.values())
    assert len(threads) == 1 and threading.get_ident() not in threads


async def test_health_streams_over_grpc_survive_an_agent_restart(pki):
    """A real stream that drops (the agent restarts on its port) is re-opened and delivers again."""
    host = SimHost("node-r", "hgx-h100-8", clock=SimClock(FAST))
    server = serve_sim_host(host, tls=pki.node)
    address = server.address
    got = []
    streams = AsyncAgentStreams(credentials=pki.console, open_timeout=2)
    sup = StreamSupervisor(lambda k, e: got.append(e), backoff_s=0.05, backoff_max_s=0.2, jitter=0.0)
    try:
        await sup.set_desired({"node-r": partial(streams.watch_health, address, "node-r")})
        await until(lambda: sup.connected == 1)
        host.inject_xid(1, 13)
        await until(lambda: len(got) == 1)
        server.stop(grace=0)
        await until(lambda: sup.stats["node-r"].failures >= 1)
        server = serve_sim_host(host, address, tls=pki.node)
        await until(lambda: sup.stats["node-r"].connected, timeout=15)
        host.inject_thermal(2, 90.0)
        await until(lambda: len(got) == 2)
        assert [e.kind for e in got] == [HealthKind.XID, HealthKind.TEMPERATURE]
        assert sup.stats["node-r"].connects >= 2
    finally:
        await sup.stop()
        await streams.close()
        server.stop(grace=0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.simulator.support import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))
