"""Polling for what another thread or process writes (a watcher, a worker)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01):
    """`predicate()`'s first truthy value within `timeout` s, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None
