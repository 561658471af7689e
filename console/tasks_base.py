"""Retry policy shared by orchestration tasks: transient hardware errors retry with backoff."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from hardware.exceptions import HardwareError

MAX_TRIES = 6


def is_transient(exc: BaseException) -> bool:
    """Worth another try: an agent or cluster that may come back, or a database that was busy
    (SQLite's lock timeout, a dropped PostgreSQL connection)."""
    if isinstance(exc, HardwareError):
        return exc.retryable
    return isinstance(exc, (OperationalError, InterfaceError))


def backoff_seconds(retries: int) -> float:
    """1, 2, 4, 8, 16 s ... capped at one minute."""
    return min(60.0, 2.0**retries)
