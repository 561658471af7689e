"""The correlation id of the work in progress, so one lease's (or one request's) whole life can be
followed in the audit log across processes. Infrastructure: imports no app.

The web middleware sets it per request; `console.dispatch` sends it with every task it enqueues
(a message header) and the worker sets it again around the task (`console.celery`); audit events
take it when their actor carries none.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextvars import ContextVar

HEADER = "console_correlation_id"
_current: ContextVar[str] = ContextVar("correlation_id", default="")


def current() -> str:
    return _current.get()


def new() -> str:
    return uuid.uuid4().hex


@contextlib.contextmanager
def bound(correlation_id: str) -> Iterator[str]:
    """Run the block under `correlation_id` (kept as it is when empty)."""
    token = _current.set(correlation_id[:64]) if correlation_id else None
    try:
        yield current()
    finally:
        if token is not None:
            _current.reset(token)
