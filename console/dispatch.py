"""Enqueue Celery tasks after the current transaction commits, by short name. Infrastructure:
imports no app and names none of their tasks.

Each app registers its own tasks' short names in its AppConfig's `ready()` (`register({...})`);
services call `on_commit("gpu_clean", gpu_id, op_id)`. The task modules are imported lazily, so
service modules and task modules do not import each other at load time.
"""

from __future__ import annotations

import importlib
import logging

from django.db import transaction

from console import correlation

log = logging.getLogger(__name__)

_TASKS: dict[str, str] = {}


def register(tasks: dict[str, str]) -> None:
    """Short name → dotted path of a Celery task, for one app's tasks."""
    clash = {name for name, path in tasks.items() if _TASKS.get(name, path) != path}
    if clash:
        raise ValueError(f"task names registered twice: {sorted(clash)}")
    _TASKS.update(tasks)


def task(name: str):
    module, _, attr = _TASKS[name].rpartition(".")
    return getattr(importlib.import_module(module), attr)


def enqueue(name: str, *args) -> None:
    """Send the task now, with the current correlation id (the worker runs it under the same id)."""
    try:
        task(name).apply_async(args=args, headers={correlation.HEADER: correlation.current()})
    except Exception:  # the broker being down must not undo a committed change; the reconciler catches up
        log.exception("could not enqueue %s%s", name, args)


def on_commit(name: str, *args) -> None:
    cid = correlation.current()  # the id of the work that asked, not of whatever commits it

    def send() -> None:
        with correlation.bound(cid):
            enqueue(name, *args)

    transaction.on_commit(send)
