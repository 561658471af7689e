"""Enqueue Celery tasks after the current transaction commits, by short name.

Services call `on_commit("gpu_clean", gpu_id, op_id)`; the task modules are imported lazily so the
service modules and the task modules do not import each other at load time.
"""

from __future__ import annotations

import importlib
import logging

from django.db import transaction

log = logging.getLogger(__name__)

TASKS = {
    "gpu_clean": "fleet.tasks.gpu_clean",
    "node_set_schedulable": "fleet.tasks.node_set_schedulable",
    "lease_advance": "tenants.tasks.lease_advance",
    "lease_follow_boot": "tenants.tasks.lease_follow_boot",
    "tenancy_provision": "tenants.tasks.tenancy_provision",
    "leases_place_pending": "tenants.tasks.leases_place_pending",
}


def task(name: str):
    module, _, attr = TASKS[name].rpartition(".")
    return getattr(importlib.import_module(module), attr)


def enqueue(name: str, *args) -> None:
    try:
        task(name).delay(*args)
    except Exception:  # the broker being down must not undo a committed change; the reconciler catches up
        log.exception("could not enqueue %s%s", name, args)


def on_commit(name: str, *args) -> None:
    transaction.on_commit(lambda: enqueue(name, *args))
