"""NodeAgent servicer: thin. Resolve the host, call the backend, convert, map errors to status codes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from hardware.agent import convert
from hardware.agent.routing import HostResolver, node_of
from hardware.agent.status import code_for
from hardware.backend import HostBackend
from hardware.exceptions import HardwareError
from hardware.proto.gen.gpuconsole.agent.v1 import agent_pb2 as pb
from hardware.proto.gen.gpuconsole.agent.v1 import agent_pb2_grpc

EMPTY = pb.Empty()
STREAM_READY_KEY = "x-gpuconsole-stream-ready"


def call(context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
    """Run `fn`; a HardwareError becomes the matching status code (abort raises)."""
    try:
        return fn()
    except HardwareError as exc:
        context.abort(code_for(exc), str(exc))


def stream(context: grpc.ServicerContext, start: Callable[[], Iterator], to_pb: Callable) -> Iterator:
    """Serve an iterator from the backend; close it when the client goes away."""
    source = call(context, start)
    close = getattr(source, "close", None)
    # The callback is registered before the client hears that the stream is set up: a client that
    # cancels at once could otherwise end the call first, and add_callback then refuses (returns
    # False, never calls it) while the loop below waits for an event that may never come.
    if close is not None and not context.add_callback(lambda: _quietly(close)):
        _quietly(close)
        return
    # Tell the client the stream is set up (it waits for this before returning a health watch).
    context.send_initial_metadata(((STREAM_READY_KEY, "1"),))
    try:
        for item in source:
            if not context.is_active():
                break
            yield to_pb(item)
    except HardwareError as exc:
        context.abort(code_for(exc), str(exc))
    finally:
        if close is not None:
            _quietly(close)


def _quietly(close: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):  # a generator still running in another thread
        close()


class NodeAgentServicer(agent_pb2_grpc.NodeAgentServicer):
    def __init__(self, resolver: HostResolver) -> None:
        self.resolver = resolver

    def _host(self, context) -> HostBackend:
        return call(context, lambda: self.resolver.host(node_of(context)))

    def GetInventory(self, request, context):
        host = self._host(context)
        return convert.inventory_to_pb(call(context, host.inventory))

    def BindVfio(self, request, context):
        host = self._host(context)
        call(context, lambda: host.bind_vfio(request.address))
        return EMPTY

    def UnbindVfio(self, request, context):
        host = self._host(context)
        call(context, lambda: host.unbind_vfio(request.address))
        return EMPTY

    def ListPartitions(self, request, context):
        host = self._host(context)
        parts = call(context, host.list_partitions)
        return pb.ListPartitionsResponse(partitions=[convert.partition_to_pb(p) for p in parts])

    def ActivatePartition(self, request, context):
        host = self._host(context)
        call(context, lambda: host.activate_partition(request.partition_id))
        return EMPTY

    def DeactivatePartition(self, request, context):
        host = self._host(context)
        call(context, lambda: host.deactivate_partition(request.partition_id))
        return EMPTY

    def SetActivatedPartitions(self, request, context):
        host = self._host(context)
        call(context, lambda: host.set_activated_partitions(list(request.partition_ids)))
        return EMPTY

    def ScrubGpu(self, request, context):
        host = self._host(context)
        yield from stream(context, lambda: host.scrub_gpu(request.module_id), convert.scrub_to_pb)

    def CheckFirmware(self, request, context):
        host = self._host(context)
        return convert.firmware_to_pb(call(context, lambda: host.check_firmware(request.module_id)))

    def LevelFirmware(self, request, context):
        host = self._host(context)
        return convert.firmware_to_pb(call(context, lambda: host.level_firmware(request.module_id)))

    def ResetGpu(self, request, context):
        host = self._host(context)
        call(context, lambda: host.reset_gpu(request.module_id))
        return EMPTY

    def ListGpuHolders(self, request, context):
        host = self._host(context)
        return convert.gpu_holders_to_pb(call(context, lambda: host.gpu_holders(request.module_id)))

    def EvictGpuHolders(self, request, context):
        host = self._host(context)
        return convert.gpu_holders_to_pb(call(context, lambda: host.evict_gpu_holders(request.module_id)))

    def WatchHealth(self, request, context):
        node = node_of(context)
        if node:
            host = self._host(context)
            start = host.watch_health
        else:
            start = self.resolver.watch_all
        yield from stream(context, start, convert.health_to_pb)

    def WatchBoot(self, request, context):
        host = self._host(context)
        yield from stream(context, lambda: host.watch_boot(request.vm_id), convert.boot_to_pb)

    def SetGpuLeases(self, request, context):
        book = call(context, lambda: self.resolver.lease_book(node_of(context)))
        bindings = [convert.gpu_lease_from_pb(m) for m in request.leases]
        call(context, lambda: book.set_bindings(bindings))
        return EMPTY

    def ListGpuLeases(self, request, context):
        book = call(context, lambda: self.resolver.lease_book(node_of(context)))
        return pb.ListGpuLeasesResponse(leases=[convert.gpu_lease_to_pb(b) for b in book.bindings()])
