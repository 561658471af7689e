"""Django over ASGI with one thread hop per request, on threads that live as long as the process.

Django's own ASGIHandler runs a synchronous view in a new thread for every request (a
`ThreadSensitiveContext` each) and hops to it three times: the `request_started` signal, the
middleware chain with the view, and closing the response. Under 32 clients that cost a trivial
request more than its view did (bench/api.py with BENCH_FLOOR=1, 32 clients on this 2-core machine:
`/healthz` answered about 500 requests a second through it, about 2,300 through this handler).

This handler keeps what Django's does on the event loop (the body is read there, chunked bodies
included, and the response is sent from there) and runs the synchronous part, from
`request_started` to `request_finished`, as one call on a bounded pool of threads (WEB_THREADS).
The threads live as long as the process and take requests in turn; each keeps its database
connection between requests the way a WSGI server's threads do (CONN_MAX_AGE, or the connection
pool when DATABASE_POOL is on). A few threads are enough: the GIL runs one at a time, and a request
queued for its turn finishes sooner than one sharing the interpreter with thirty others (bench/api.py
measured the tail latency both ways).

A long-poll (a `wait` query parameter over 0, the API's `?wait=N`) spends its time asleep; it runs
on a pool of its own (WEB_WAIT_THREADS) so that waiting clients never hold the threads that answer.

A synchronous streaming response (a static file through WhiteNoise) is read on the pool thread, as
Django's handler reads it whole too, and sent from the event loop.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import django
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.urls import set_script_prefix

LONG_POLL = re.compile(rb"(?:^|&)wait=0*[1-9]")


class PooledASGIHandler(ASGIHandler):
    """HTTP only (websockets go to Channels): see the module's docstring."""

    def __init__(self, threads: int | None = None, wait_threads: int | None = None):
        BaseHandler.__init__(self)  # not ASGIHandler's: it loads the async middleware chain (a hop each)
        self.load_middleware(is_async=False)
        self.executor = ThreadPoolExecutor(max_workers=threads or settings.WEB_THREADS, thread_name_prefix="http")
        self.wait_executor = ThreadPoolExecutor(max_workers=wait_threads or settings.WEB_WAIT_THREADS,
                                                thread_name_prefix="http-wait")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        loop = asyncio.get_running_loop()
        executor = self.wait_executor if LONG_POLL.search(scope.get("query_string", b"")) else self.executor
        try:
            response = await loop.run_in_executor(executor, self._respond, scope, body_file)
            try:
                await self.send_response(response, send)
            finally:
                if not response.closed_on_pool:  # an asynchronous stream: closed once sent
                    await loop.run_in_executor(executor, response.close)
        finally:
            body_file.close()

    def _respond(self, scope, body_file):
        """Everything a WSGI server's thread would do for the request. The response comes back closed,
        so `request_finished` runs on this thread, unless it streams asynchronously."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
        response._handler_class = self.__class__
        if response.streaming and not response.is_async:
            # A synchronous stream (a static file) is read whole, as Django's own ASGI handler reads
            # it (with a warning each time); here on this thread, then sent from the event loop.
            response.streaming_content = _replay(list(response.streaming_content))
            response.closed_on_pool = True
        else:
            response.closed_on_pool = not response.streaming
        if response.closed_on_pool:
            response.close()
        return response


async def _replay(parts: list):
    for part in parts:
        yield part


def get_http_application() -> PooledASGIHandler:
    """The HTTP side of console.asgi, Django set up first (as `get_asgi_application` does)."""
    django.setup(set_prefix=False)
    return PooledASGIHandler()
