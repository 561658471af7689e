"""Retry policy shared by orchestration tasks: transient hardware errors retry with backoff."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from hardware.exceptions import HardwareError

MAX_TRIES = 6
# A database that was busy or went away for a moment (SQLite's lock timeout, a dropped PostgreSQL
# connection): the same write is worth another try.
DATABASE_TRANSIENT = (OperationalError, InterfaceError)


def is_transient(exc: BaseException) -> bool:
    """Worth another try: an agent or cluster that may come back, or a busy database."""
    if isinstance(exc, HardwareError):
        return exc.retryable
    return isinstance(exc, DATABASE_TRANSIENT)


def backoff_seconds(retries: int) -> float:
    """1, 2, 4, 8, 16 s ... capped at one minute."""
    return min(60.0, 2.0**retries)
