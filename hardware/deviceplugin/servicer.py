"""The `DevicePlugin` gRPC service: ListAndWatch, Allocate, GetPreferredAllocation, PreStartContainer.

Allocate refuses (a gRPC error, which fails the pod's admission) rather than hand out a GPU that
is unknown (NOT_FOUND), not isolated (shares its IOMMU group with another device, or the host's
driver holds it: the source never lists it), unhealthy, held by no lease, held by a lease that is
not ready yet (still scrubbing or levelling) or split across leases (FAILED_PRECONDITION).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from enum import StrEnum

import grpc

from hardware import kube_constants as kc
from hardware.deviceplugin.devices import HEALTHY, UNHEALTHY, DeviceSource, PluginDevice
from hardware.deviceplugin.gen import api_pb2, api_pb2_grpc
from hardware.deviceplugin.leases import LeaseBook, grant_of


class AllocateMode(StrEnum):
    """What Allocate answers: CDI device names, VFIO device specs, or both."""

    CDI = "cdi"
    DEVICE_SPECS = "device-specs"
    BOTH = "both"


def _id_order(device_id: str) -> tuple[int, str]:
    return (len(device_id), device_id)  # "2" before "10"


class DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):
    """Serves the kubelet from a device source and a lease book."""

    def __init__(self, source: DeviceSource, book: LeaseBook, *, mode: AllocateMode = AllocateMode.CDI,
                 poll_interval: float = 5.0):
        self._source = source
        self._book = book
        self._mode = AllocateMode(mode)
        self._poll = poll_interval
        self._changed = threading.Condition()
        self._generation = 0
        self._stopped = False
        subscribe = getattr(source, "subscribe", None)
        if subscribe is not None:
            subscribe(self.notify)

    def notify(self) -> None:
        """Wake every ListAndWatch stream: the devices or their health may have changed."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def stop(self) -> None:
        """End every ListAndWatch stream."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def GetDevicePluginOptions(self, request, context):
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def ListAndWatch(self, request, context):
        """Send the device list now and again whenever it (or a device's health) changes."""
        last = None
        while context.is_active():
            with self._changed:
                if self._stopped:
                    return
                generation = self._generation
            devices = tuple(self._source.devices())
            if devices != last:
                yield api_pb2.ListAndWatchResponse(devices=[_device(d) for d in devices])
                last = devices
            with self._changed:
                if self._generation == generation and not self._stopped:
                    self._changed.wait(self._poll)

    def GetPreferredAllocation(self, request, context):
        """Prefer exactly the GPUs of a ready lease that fits the request; else any fitting set."""
        responses = []
        for container in request.container_requests:
            available = list(container.available_deviceIDs)
            must = list(container.must_include_deviceIDs)
            size = container.allocation_size
            choice = None
            for grant in sorted(self._book.grants(), key=lambda g: g.lease_id):
                ids = grant.device_ids
                if grant.ready and len(ids) == size and ids <= set(available) and set(must) <= ids:
                    choice = sorted(ids, key=_id_order)
                    break
            if choice is None:
                rest = [d for d in sorted(available, key=_id_order) if d not in must]
                choice = must + rest[: max(0, size - len(must))]
            responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=choice))
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    def Allocate(self, request, context):
        known = {d.device_id: d for d in self._source.devices()}
        not_offered = getattr(self._source, "not_offered", dict)()
        responses = []
        for container in request.container_requests:
            ids = list(container.devices_ids)
            refusal = self._refusal(ids, known, not_offered)
            if refusal is not None:
                context.abort(*refusal)
            responses.append(self._container_response([known[i] for i in ids]))
        return api_pb2.AllocateResponse(container_responses=responses)

    def PreStartContainer(self, request, context):
        return api_pb2.PreStartContainerResponse()

    def _refusal(self, ids: Sequence[str], known: dict[str, PluginDevice],
                 not_offered: dict[str, str]) -> tuple[grpc.StatusCode, str] | None:
        if not ids:
            return grpc.StatusCode.INVALID_ARGUMENT, "no devices requested"
        isolated_not = [i for i in ids if i in not_offered]
        if isolated_not:
            reasons = "; ".join(f"GPU {i}: {not_offered[i]}" for i in isolated_not)
            return grpc.StatusCode.FAILED_PRECONDITION, f"not isolated, never offered: {reasons}"
        unknown = [i for i in ids if i not in known]
        if unknown:
            return grpc.StatusCode.NOT_FOUND, f"unknown {kc.GPU_RESOURCE} device(s) {unknown}"
        unhealthy = [i for i in ids if not known[i].healthy]
        if unhealthy:
            return grpc.StatusCode.FAILED_PRECONDITION, f"GPU(s) {unhealthy} are unhealthy"
        grants = {i: grant_of(self._book, i) for i in ids}
        unleased = [i for i, g in grants.items() if g is None]
        if unleased:
            return grpc.StatusCode.FAILED_PRECONDITION, f"GPU(s) {unleased} are held by no lease"
        leases = {g.lease_id: g for g in grants.values() if g is not None}
        if len(leases) > 1:
            return grpc.StatusCode.FAILED_PRECONDITION, f"GPUs of different leases {sorted(leases)} in one request"
        [grant] = leases.values()
        if not grant.ready:
            state = grant.state or "not ready"
            message = f"lease {grant.lease_id} is {state}: its GPUs are not allocatable"
            return grpc.StatusCode.FAILED_PRECONDITION, message
        return None

    def _container_response(self, devices: Sequence[PluginDevice]) -> api_pb2.ContainerAllocateResponse:
        response = api_pb2.ContainerAllocateResponse()
        if self._mode in (AllocateMode.CDI, AllocateMode.BOTH):
            response.cdi_devices.extend(api_pb2.CDIDevice(name=kc.cdi_device_name(d.index)) for d in devices)
        if self._mode in (AllocateMode.DEVICE_SPECS, AllocateMode.BOTH):
            response.devices.extend(
                api_pb2.DeviceSpec(container_path=f"/dev/vfio/{d.iommu_group}", host_path=f"/dev/vfio/{d.iommu_group}",
                                   permissions="rw")
                for d in devices
            )
        return response


def _device(device: PluginDevice) -> api_pb2.Device:
    message = api_pb2.Device(ID=device.device_id, health=HEALTHY if device.healthy else UNHEALTHY)
    if device.numa_node is not None:
        message.topology.nodes.append(api_pb2.NUMANode(ID=device.numa_node))
    return message
