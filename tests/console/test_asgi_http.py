"""The project's ASGI application over HTTP (console.asgi_http): bodies read on the event loop (chunked
ones too), the synchronous part on reused threads, responses and their closing as Django's handler does."""

import json

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.core import signals

from console.asgi import django_asgi_app
from tenants.states import TenantState
from tenants.tokens import api_token_create
from tests.api.conftest import SEED_IMAGE
from tests.factories import TenantFactory, make_server
from tests.factories.fleet import TEST_ACTOR


def _scope(method: str, path: str, headers: dict[str, str] | None = None) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}


def _call(method: str, path: str, chunks: list[bytes] = (b"",), headers: dict | None = None, handler=None):
    """One request through the application, its body in `chunks` (no Content-Length: chunked)."""

    async def run():
        scope = _scope(method, path, {"Host": "testserver", **(headers or {})})
        app = ApplicationCommunicator(handler or django_asgi_app, scope)
        for i, chunk in enumerate(chunks):
            await app.send_input({"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1})
        start = await app.receive_output(10)
        body = b""
        while True:
            message = await app.receive_output(10)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        return start["status"], dict((k.decode().lower(), v.decode()) for k, v in start["headers"]), body

    return async_to_sync(run)()


@pytest.mark.django_db(transaction=True)
def test_requests_run_on_reused_threads_and_each_finishes_as_django_would():
    finished = []

    def on_finished(**kwargs):
        import threading

        finished.append(threading.current_thread().name)

    from console.asgi_http import PooledASGIHandler

    handler = PooledASGIHandler(threads=1, wait_threads=1)
    signals.request_finished.connect(on_finished)
    try:
        for _ in range(5):
            status, _, body = _call("GET", "/healthz", handler=handler)
            assert status == 200, body
    finally:
        signals.request_finished.disconnect(on_finished)
        handler.executor.shutdown()
        handler.wait_executor.shutdown()
    # request_finished ran on the pool's thread (a non-streaming response is closed there), and the
    # five requests were answered by that one thread (Django's handler starts a thread for each).
    assert finished == ["http_0"] * 5


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_over_the_limit_is_a_413_problem(settings):
    settings.API_MAX_BODY_BYTES = 1000
    status, headers, body = _call("POST", "/api/v1/containers", [b"{" + b" " * 600, b" " * 600, b"}"],
                                  {"Content-Type": "application/json"})
    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "payload_too_large"


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_within_the_limit_records_the_lease():
    make_server()
    tenant = TenantFactory(name="landon", state=TenantState.READY, gpu_quota=8)
    _, raw = api_token_create(actor=TEST_ACTOR, tenant=tenant)
    payload = json.dumps({"container-url": SEED_IMAGE, "tenancy": "landon", "gpus": 2}).encode()
    status, headers, body = _call("POST", "/api/v1/containers", [payload[:10], payload[10:40], payload[40:]],
                                  {"Content-Type": "application/json", "Authorization": f"Bearer {raw}"})
    assert status == 202, body
    lease = json.loads(body)
    assert headers["location"] == f"/api/v1/leases/{lease['id']}" and lease["gpus"] == 2


@pytest.mark.django_db(transaction=True)
def test_errors_answer_as_through_django_s_handler():
    status, headers, _ = _call("GET", "/api/v1/no-such-thing")
    assert status == 404 and headers["content-type"] == "application/problem+json"
    status, headers, _ = _call("GET", "/api/v1/me")
    assert status == 401 and headers["content-type"] == "application/problem+json" and headers["www-authenticate"]


@pytest.mark.django_db(transaction=True)
def test_a_static_file_streams_and_is_closed():
    from pathlib import Path

    from django.conf import settings

    source = Path(settings.STATICFILES_DIRS[0])
    name = max(source.rglob("*.js"), key=lambda p: p.stat().st_size)  # a file response: streamed
    status, headers, body = _call("GET", f"/static/{name.relative_to(source).as_posix()}")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert body == name.read_bytes()


@pytest.mark.django_db(transaction=True)
def test_long_polls_never_hold_the_threads_that_answer():
    """One answering thread, two long-polls waiting: a plain request is still answered at once."""
    import asyncio
    import time

    from console.asgi_http import PooledASGIHandler
    from tests.factories import LeaseFactory

    tenant = TenantFactory(name="landon", state=TenantState.READY)
    _, raw = api_token_create(actor=TEST_ACTOR, tenant=tenant)
    lease = LeaseFactory(tenant=tenant)
    handler = PooledASGIHandler(threads=1, wait_threads=2)
    auth = {"Host": "testserver", "Authorization": f"Bearer {raw}"}

    async def run():
        polls = []
        for _ in range(2):
            scope = {**_scope("GET", f"/api/v1/leases/{lease.pk}", auth), "query_string": b"wait=2"}
            poll = ApplicationCommunicator(handler, scope)
            await poll.send_input({"type": "http.request", "body": b""})
            polls.append(poll)
        await asyncio.sleep(0.3)  # both are waiting now
        started = time.monotonic()
        plain = ApplicationCommunicator(handler, _scope("GET", "/healthz", {"Host": "testserver"}))
        await plain.send_input({"type": "http.request", "body": b""})
        answered = (await plain.receive_output(1))["status"], time.monotonic() - started
        waited = [(await poll.receive_output(5))["status"] for poll in polls]
        for poll in polls:
            await poll.receive_output(1)  # the body
        return answered, waited

    try:
        (status, seconds), waited = async_to_sync(run)()
    finally:
        handler.executor.shutdown()
        handler.wait_executor.shutdown()
    assert status == 200 and seconds < 1 and waited == [200, 200]
