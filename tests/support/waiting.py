"""Polling for what another thread or process writes (a watcher, a worker)."""

from __future__ import annotations

import time

from django.db import OperationalError


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01):
    """`predicate()`'s first truthy value within `timeout` s, else None. SQLite's shared in-memory
    test database may report a table locked while another thread writes: that is polled again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OperationalError:
            pass
        time.sleep(interval)
    return None
