"""What the node watcher does for boots, done synchronously for tests that drain tasks by hand:
every boot a holder waits on is followed over the agent's real WatchBoot stream (the sync client)
and handed to the holder through the same registry. tests/fleet/test_node_watch.py runs the real
asyncio watcher end to end."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from fleet import holders
from fleet.agents import agent_for
from fleet.models import Allocation
from fleet.node_watch import NodeWatch, run_node_watch
from hardware import kube_constants


def follow_boots_now() -> int:
    """Follow every waited-on boot to its end; returns how many were followed."""
    followed = 0
    for allocation in Allocation.objects.filter(pk__in=holders.booting_allocations()).select_related("server"):
        vm_id = kube_constants.vm_id_for_pod(allocation.consumer_namespace, allocation.consumer_name)
        stream = agent_for(allocation.server).watch_boot(vm_id)
        try:
            for event in stream:
                if holders.record_boot_event(allocation_id=allocation.pk, holder=allocation.holder, event=event):
                    break
        finally:
            stream.cancel()
        followed += 1
    return followed


@contextlib.contextmanager
def running_node_watch(**options) -> Iterator[NodeWatch]:
    """The real node watcher (asyncio, grpc.aio) on a thread of its own for the body; stopped after."""
    stop = threading.Event()
    watch = NodeWatch(**options)
    thread = threading.Thread(target=_run, args=(stop, watch), name="node-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the node watcher did not stop"


def _run(stop: threading.Event, watch: NodeWatch) -> None:
    from django.db import connection

    try:
        run_node_watch(stop, watch=watch)
    finally:
        connection.close()
