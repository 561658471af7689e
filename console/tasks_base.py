"""Retry policy shared by orchestration tasks: transient hardware errors retry with backoff."""

from __future__ import annotations

from hardware.exceptions import HardwareError

MAX_TRIES = 6


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, HardwareError) and exc.retryable


def backoff_seconds(retries: int) -> float:
    """1, 2, 4, 8, 16 s ... capped at one minute."""
    return min(60.0, 2.0**retries)
