"""The only module that sends Channels group messages. Infrastructure: imports no app.

Services publish after commit. Groups: `<app>.<collection>` (e.g. `fleet.servers`) and
`<app>.<model>.<pk>` (e.g. `fleet.server.7`). Consumers turn an `event.push` into the HTML
fragment the user may see.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

# Which collection group an object's events also go to, by model label.
COLLECTION_GROUPS = {
    "fleet.server": "fleet.servers",
    "fleet.gpu": "fleet.servers",
    "fleet.partition": "fleet.servers",
    "tenants.lease": "tenants.leases",
    "tenants.tenant": "tenants.tenants",
    "tenants.bootphase": "tenants.leases",
    "console.operation": "console.operations",
}


def object_group(model_label: str, pk: Any) -> str:
    return f"{model_label}.{pk}"


def groups_for(payload: dict) -> list[str]:
    groups = [object_group(payload["target_type"], payload["target_id"])]
    if payload.get("parent_type"):
        groups.append(object_group(payload["parent_type"], payload["parent_id"]))
    collection = COLLECTION_GROUPS.get(payload["target_type"])
    if collection:
        groups.append(collection)
    return groups


def publish(topic: str, payload: dict) -> None:
    """Send an `event.push` to every group the payload concerns, in one hop into the event loop.
    Never raises into a service: a dead channel layer must not undo a committed change."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "event.push", "topic": topic, "payload": payload}
    try:
        async_to_sync(_send)(layer, groups_for(payload), message)
    except Exception:
        log.exception("realtime publish of %s failed", topic)


async def _send(layer, groups: list[str], message: dict) -> None:
    results = await asyncio.gather(*(layer.group_send(g, message) for g in groups), return_exceptions=True)
    for group, result in zip(groups, results, strict=True):
        if isinstance(result, Exception):
            log.error("realtime publish to %s failed: %s", group, result)


def publish_on_commit(topic: str, payload: dict) -> None:
    transaction.on_commit(lambda: publish(topic, payload))
