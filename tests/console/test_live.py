"""The live stream end to end: the relay reads the audit log, consumers behind the real ASGI router
(login, origin check) send rendered fragments; changes made outside the web request (a worker
thread, another process) reach a connected websocket; versions make reconnects lossless; bursts are
coalesced. On the in-memory channel layer (the embedded default) and on Redis."""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import close_old_connections, connection

from console import relay
from console.audit import Actor
from fleet.models import Gpu, Server
from fleet.services import gpu_drain, server_cordon, server_uncordon
from tests.factories import make_server, make_user

pytestmark = pytest.mark.django_db(transaction=True)
ACTOR = Actor.system("worker")
IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def _redis():
    return {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                        "CONFIG": {"hosts": [{"address": os.environ.get("REDIS_URL", ""), "socket_timeout": 15}],
                                   "prefix": f"t{os.getpid()}"}}}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def layer(request, settings):
    settings.CHANNEL_LAYERS = IN_MEMORY if request.param == "memory" else _redis()
    channel_layers.backends.clear()
    yield request.param
    relay.stop_all()  # joins the relay threads: none reads the database while it is flushed
    channel_layers.backends.clear()


@pytest.fixture
def session_cookie(client):
    def login(role="viewer"):
        client.force_login(make_user(role))
        return client.cookies[django_settings.SESSION_COOKIE_NAME].value
    return login


def _communicator(path, cookie=None):
    from console.asgi import application

    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def _next(comm, wait: float):
    """The next message, or None after `wait` s (asgiref's receive timeout would cancel the consumer)."""
    if await comm.receive_nothing(timeout=wait, interval=0.01):
        return None
    return json.loads(await comm.receive_from())


async def _until(comm, predicate, timeout=5.0):
    """Receive messages until one satisfies `predicate`; returns it and everything received."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await _next(comm, 0.1)
        if msg is None:
            continue
        seen.append(msg)
        if predicate(msg):
            return msg, seen
    raise AssertionError(f"no matching message in {timeout}s; got {seen}")


def in_worker_thread(fn):
    """Run `fn` on another thread with its own database connection, as a Celery worker would."""
    def run():
        try:
            fn()
        finally:
            close_old_connections()
            connection.close()
    t = threading.Thread(target=run)
    t.start()
    t.join()


async def test_anonymous_and_roleless_sockets_are_refused(layer, session_cookie):
    comm = _communicator("/ws/fleet/")
    connected, _ = await comm.connect()
    assert not connected
    cookie = await sync_to_async(session_cookie)(None)
    comm = _communicator("/ws/fleet/", cookie)
    connected, _ = await comm.connect()
    assert not connected


async def test_a_change_in_a_worker_thread_reaches_the_map(layer, session_cookie):
    server = await sync_to_async(make_server)()
    cookie = await sync_to_async(session_cookie)()
    comm = _communicator("/ws/fleet/", cookie)
    connected, _ = await comm.connect()
    assert connected
    hello, _ = await _until(comm, lambda m: m["type"] == "hello")
    await sync_to_async(in_worker_thread)(lambda: server_cordon(server=Server.objects.get(pk=server.pk), actor=ACTOR))
    msg, _ = await _until(comm, lambda m: m["type"] == "fragments" and f"server-{server.pk}" in m["html"])
    assert 'class="t s-cordoned"' in msg["html"][f"server-{server.pk}"]
    assert msg["v"] > hello["v"]
    await comm.disconnect()


@pytest.mark.postgres
async def test_a_change_in_another_process_reaches_the_map(layer, session_cookie):
    """A real second process (a worker, the health watcher) writing to the same database."""
    server = await sync_to_async(make_server)()
    cookie = await sync_to_async(session_cookie)()
    comm = _communicator("/ws/fleet/", cookie)
    assert (await comm.connect())[0]
    await _until(comm, lambda m: m["type"] == "hello")
    db = connection.settings_dict
    env = dict(os.environ, DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
               DJANGO_SETTINGS_MODULE="console.settings", PYTHONPATH=str(django_settings.BASE_DIR))
    code = ("import django; django.setup(); from fleet.models import Server; from fleet.services import server_cordon;"
            f"from console.audit import Actor; server_cordon(server=Server.objects.get(pk={server.pk}),"
            "actor=Actor.system('other-process'))")
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], env=env, check=True)
    msg, _ = await _until(comm, lambda m: m["type"] == "fragments" and f"server-{server.pk}" in m["html"], 10)
    assert 's-cordoned' in msg["html"][f"server-{server.pk}"]
    await comm.disconnect()


async def test_reconnect_with_a_version_gets_what_it_missed(layer, session_cookie):
    server = await sync_to_async(make_server)()
    cookie = await sync_to_async(session_cookie)()
    comm = _communicator("/ws/fleet/", cookie)
    assert (await comm.connect())[0]
    hello, _ = await _until(comm, lambda m: m["type"] == "hello")
    await comm.disconnect()
    gpu = await sync_to_async(lambda: server.gpus.get(module_id=4))()
    await sync_to_async(in_worker_thread)(lambda: gpu_drain(gpu=Gpu.objects.get(pk=gpu.pk), actor=ACTOR))
    comm = _communicator(f"/ws/fleet/?v={hello['v']}", cookie)
    assert (await comm.connect())[0]
    msg, _ = await _until(comm, lambda m: m["type"] == "fragments" and f"server-{server.pk}" in m["html"])
    tile = msg["html"][f"server-{server.pk}"]
    assert tile.count('<i class="x"') == 1 and tile.count('<i class="f"') == 7
    await comm.disconnect()


async def test_reconnect_after_too_much_gets_a_snapshot(layer, session_cookie, monkeypatch):
    monkeypatch.setattr(relay, "CATCH_UP_LIMIT", 2)
    server = await sync_to_async(make_server)()
    cookie = await sync_to_async(session_cookie)()
    version = await sync_to_async(relay.latest_id)()
    for _ in range(2):
        await sync_to_async(server_cordon)(server=server, actor=ACTOR)
        await sync_to_async(server_uncordon)(server=server, actor=ACTOR)
    comm = _communicator(f"/ws/fleet/?v={version}", cookie)
    assert (await comm.connect())[0]
    msg, _ = await _until(comm, lambda m: m["type"] == "snapshot")
    assert msg["v"] == await sync_to_async(relay.latest_id)()
    await comm.disconnect()


async def test_bursts_are_coalesced_to_at_most_ten_messages_a_second(layer, session_cookie):
    servers = await sync_to_async(lambda: [make_server() for _ in range(3)])()
    cookie = await sync_to_async(session_cookie)()
    comm = _communicator("/ws/fleet/", cookie)
    assert (await comm.connect())[0]
    await _until(comm, lambda m: m["type"] == "hello")

    def churn():
        for i in range(40):
            s = Server.objects.get(pk=servers[i % 3].pk)
            (server_cordon if s.state == "active" else server_uncordon)(server=s, actor=ACTOR)
    start = time.monotonic()
    await sync_to_async(in_worker_thread)(churn)
    ids = [x.pk for x in servers]
    final = await sync_to_async(lambda: dict(Server.objects.filter(pk__in=ids).values_list("pk", "state")))()
    last: dict[int, str] = {}
    messages = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        msg = await _next(comm, 1.0)
        if msg is None:
            break
        messages += 1
        for s in servers:
            html = msg.get("html", {}).get(f"server-{s.pk}")
            if html:
                last[s.pk] = "cordoned" if "s-cordoned" in html else "active"
    elapsed = time.monotonic() - start
    assert last == final, "the last render of each tile is its state in the database"
    assert messages <= 10 * elapsed + 2, (messages, elapsed)
    await comm.disconnect()


async def test_server_page_gets_its_parts_and_telemetry(layer, session_cookie):
    server = await sync_to_async(make_server)()
    cookie = await sync_to_async(session_cookie)("support")
    comm = _communicator(f"/ws/servers/{server.pk}/", cookie)
    assert (await comm.connect())[0]
    await _until(comm, lambda m: m["type"] == "hello")
    await sync_to_async(in_worker_thread)(lambda: server_cordon(server=Server.objects.get(pk=server.pk), actor=ACTOR))
    msg, _ = await _until(comm, lambda m: m["type"] == "fragments")
    assert set(msg["html"]) == {f"server-{server.pk}-{p}" for p in
                                ("header", "partitions", "gpus", "history", "operations")}
    assert "Uncordon" in msg["html"][f"server-{server.pk}-header"], "support sees its buttons"
    await asyncio.sleep(1.1)  # the telemetry loop has read the temperatures once
    await sync_to_async(lambda: Gpu.objects.filter(server=server, module_id=2).update(temperature_c=77.4))()
    msg, _ = await _until(comm, lambda m: m["type"] == "telemetry", timeout=4)
    gpu2 = await sync_to_async(lambda: server.gpus.get(module_id=2).pk)()
    assert msg["temps"] == {str(gpu2): 77}
    await comm.disconnect()


async def test_unknown_server_socket_is_closed(layer, session_cookie):
    cookie = await sync_to_async(session_cookie)()
    comm = _communicator("/ws/servers/99999/", cookie)
    connected, _ = await comm.connect()
    assert not connected



@pytest.mark.redis
async def test_an_idle_socket_on_redis_stays_up(settings, session_cookie):
    """The layer's blocking receive waits 5 s; redis-py 8's default 5-second socket timeout would end
    every idle consumer (django/channels_redis#422). The settings' layer config keeps it up."""
    import importlib

    from console import settings as project_settings

    settings.CHANNEL_LAYERS = importlib.reload(project_settings).CHANNEL_LAYERS
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    channel_layers.backends.clear()
    try:
        server = await sync_to_async(make_server)()
        cookie = await sync_to_async(session_cookie)()
        comm = _communicator("/ws/fleet/", cookie)
        assert (await comm.connect())[0]
        await _until(comm, lambda m: m["type"] == "hello")
        await asyncio.sleep(6.5)
        await sync_to_async(server_cordon)(server=server, actor=ACTOR)
        msg, _ = await _until(comm, lambda m: m["type"] == "fragments" and f"server-{server.pk}" in m["html"])
        assert "s-cordoned" in msg["html"][f"server-{server.pk}"]
        await comm.disconnect()
    finally:
        relay.stop_all()
        channel_layers.backends.clear()


def test_a_relay_whose_loop_closed_sends_nothing_and_leaves_no_coroutine_behind():
    """The ASGI server's loop can close while its relay thread is between looking and sending (a
    server stopping; each async test's own loop): the send fails with the loop's error and the
    coroutine made for it is closed, not left for the garbage collector to warn about."""
    import gc
    import warnings

    loop = asyncio.new_event_loop()
    loop.close()
    stopped = relay.Relay(loop, layer=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="closed"):
            stopped._send({"fleet.servers": [{"type": "fleet.server"}]}, 1)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
