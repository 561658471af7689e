"""Django over ASGI with one thread hop per request, on threads that live as long as the process.

Django's own ASGIHandler runs a synchronous view in a new thread for every request (a
`ThreadSensitiveContext` each) and hops to it three times: the `request_started` signal, the
middleware chain with the view, and closing the response. Under 32 clients that cost a trivial
request more than its view did (bench/api.py: `/healthz` answered about 500 requests a second
through it on this 2-core machine, about 1,500 with one hop on reused threads).

This handler keeps what Django's does on the event loop (the body is read there, chunked bodies
included, and the response is sent from there) and runs the synchronous part, from
`request_started` to `request_finished`, as one call on a bounded pool of threads. Each thread keeps
its database connection between requests the way a WSGI server's threads do (CONN_MAX_AGE, or the
connection pool when DATABASE_POOL is on). A request that waits (the API's `?wait=` long-poll) holds
one of these threads; the pool is sized for many such waits (WEB_THREADS), since a sleeping thread
costs no CPU.

Streaming responses (static files through WhiteNoise) are sent by Django's own streaming path and
closed on the pool afterwards.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.urls import set_script_prefix

DEFAULT_THREADS = 64


class PooledASGIHandler(ASGIHandler):
    """HTTP only (websockets go to Channels): see the module's docstring."""

    def __init__(self, threads: int | None = None):
        BaseHandler.__init__(self)  # not ASGIHandler's: it loads the async middleware chain (a hop each)
        self.load_middleware(is_async=False)
        threads = threads or int(os.environ.get("WEB_THREADS", DEFAULT_THREADS))
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="http")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self.executor, self._respond, scope, body_file)
            try:
                await self.send_response(response, send)
            finally:
                if response.streaming:
                    await loop.run_in_executor(self.executor, response.close)
        finally:
            body_file.close()

    def _respond(self, scope, body_file):
        """Everything a WSGI server's thread would do for the request; a non-streaming response comes
        back closed (its content is in memory), so `request_finished` runs on this thread."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
        response._handler_class = self.__class__
        if not response.streaming:
            response.close()
        return response


def get_http_application() -> PooledASGIHandler:
    """The HTTP side of console.asgi (call after django.setup())."""
    import django

    django.setup(set_prefix=False)
    return PooledASGIHandler()
