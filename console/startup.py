"""What a long-lived process does once it has started. Infrastructure: imports no app."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Take everything allocated while starting (Django, the apps, Celery, Channels: a few hundred
    thousand objects that live as long as the process) out of the garbage collector's scans, so its
    full collections cost what requests allocate, not what start-up did. bench/lease_throughput.py
    measured the difference under 32 concurrent requests (see its `gc_frozen` figure)."""
    gc.collect()
    gc.freeze()
