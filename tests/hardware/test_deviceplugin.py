"""The device plugin over its real unix-socket gRPC, with a fake kubelet Registration server."""

from __future__ import annotations

import shutil
import tempfile
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from hardware.deviceplugin import generate
from hardware.deviceplugin.devices import PluginDevice, StaticDeviceSource
from hardware.deviceplugin.gen import api_pb2, api_pb2_grpc
from hardware.deviceplugin.leases import InMemoryLeaseBook
from hardware.deviceplugin.server import DevicePluginServer, RegistrationFailed
from hardware.deviceplugin.servicer import AllocateMode, DevicePluginServicer

GPUS = [PluginDevice(index=i, iommu_group=60 + i, numa_node=i // 4) for i in range(8)]


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    """Plays the kubelet's Registration service on `<dir>/kubelet.sock`."""

    def __init__(self, refuse: bool = False):
        self.requests: list[api_pb2.RegisterRequest] = []
        self.refuse = refuse

    def Register(self, request, context):
        self.requests.append(request)
        if self.refuse:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, "resource already registered")
        return api_pb2.Empty()


@pytest.fixture
def plugin_dir():
    path = Path(tempfile.mkdtemp(prefix="dp", dir="/tmp"))  # unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _kubelet(plugin_dir, refuse=False):
    kubelet = FakeKubelet(refuse)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_RegistrationServicer_to_server(kubelet, server)
    server.add_insecure_port(f"unix://{plugin_dir / 'kubelet.sock'}")
    server.start()
    return kubelet, server


@pytest.fixture
def book():
    return InMemoryLeaseBook()


@pytest.fixture
def source():
    return StaticDeviceSource(GPUS)


@pytest.fixture
def running(plugin_dir, source, book):
    """(kubelet, plugin server, DevicePlugin stub) with the plugin registered."""
    kubelet, kubelet_server = _kubelet(plugin_dir)
    plugin = DevicePluginServer(DevicePluginServicer(source, book, poll_interval=0.2), plugin_dir=plugin_dir)
    plugin.serve()
    channel = grpc.insecure_channel(f"unix://{plugin.socket_path}")
    yield kubelet, plugin, api_pb2_grpc.DevicePluginStub(channel)
    channel.close()
    plugin.stop(grace=0)
    kubelet_server.stop(0)


def test_generated_stubs_are_current(tmp_path):
    generate.generate(tmp_path / "gen")
    for produced in sorted((tmp_path / "gen").glob("*.py")):
        assert produced.read_bytes() == (generate.GEN_ROOT / produced.name).read_bytes(), produced.name


def test_wire_names_and_field_numbers_match_the_kubelet_api():
    file = api_pb2.DESCRIPTOR
    assert file.package == "v1beta1"
    assert set(file.services_by_name) == {"Registration", "DevicePlugin"}
    assert [m.name for m in file.services_by_name["DevicePlugin"].methods] == [
        "GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate", "PreStartContainer"]

    def numbers(message):
        return {f.name: f.number for f in file.message_types_by_name[message].fields}

    assert numbers("RegisterRequest") == {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4}
    assert numbers("DevicePluginOptions") == {"pre_start_required": 1, "get_preferred_allocation_available": 2}
    assert numbers("Device") == {"ID": 1, "health": 2, "topology": 3}
    assert numbers("ContainerAllocateResponse") == {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4,
                                                    "cdi_devices": 5}
    assert numbers("ContainerPreferredAllocationRequest") == {
        "available_deviceIDs": 1, "must_include_deviceIDs": 2, "allocation_size": 3}
    assert numbers("DeviceSpec") == {"container_path": 1, "host_path": 2, "permissions": 3}
    assert numbers("CDIDevice") == {"name": 1}


def test_registers_with_the_kubelet(running):
    kubelet, plugin, stub = running
    [request] = kubelet.requests
    assert request.version == "v1beta1"
    assert request.endpoint == plugin.endpoint == plugin.socket_path.name
    assert request.resource_name == "nvidia.com/gpu"
    assert request.options.get_preferred_allocation_available
    options = stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
    assert options.get_preferred_allocation_available and not options.pre_start_required


def test_registration_refused_raises_and_cleans_up(plugin_dir, source, book):
    _, kubelet_server = _kubelet(plugin_dir, refuse=True)
    plugin = DevicePluginServer(DevicePluginServicer(source, book), plugin_dir=plugin_dir)
    try:
        with pytest.raises(RegistrationFailed, match="ALREADY_EXISTS"):
            plugin.serve(timeout=5)
        assert not plugin.socket_path.exists()
    finally:
        kubelet_server.stop(0)


def test_list_and_watch_sends_an_update_when_health_changes(running, source):
    _, _, stub = running
    stream = stub.ListAndWatch(api_pb2.Empty(), timeout=10)
    first = next(stream)
    assert [(d.ID, d.health) for d in first.devices] == [(str(i), "Healthy") for i in range(8)]
    assert [d.topology.nodes[0].ID for d in first.devices] == [0, 0, 0, 0, 1, 1, 1, 1]

    source.set_health(2, False)
    second = next(stream)
    assert {d.ID: d.health for d in second.devices}["2"] == "Unhealthy"
    assert sum(d.health == "Healthy" for d in second.devices) == 7
    stream.cancel()


def _allocate(stub, *requests):
    return stub.Allocate(api_pb2.AllocateRequest(container_requests=[
        api_pb2.ContainerAllocateRequest(devices_ids=ids) for ids in requests]), timeout=5)


def test_allocate_returns_cdi_names_of_a_ready_lease(running, book):
    _, _, stub = running
    book.put("lease-1", [6, 7], ready=True, state="booting")
    response = _allocate(stub, ["6", "7"])
    [container] = response.container_responses
    assert [d.name for d in container.cdi_devices] == ["nvidia.com/gpu=6", "nvidia.com/gpu=7"]
    assert list(container.devices) == []


@pytest.mark.parametrize(("setup", "ids", "code", "text"), [
    (lambda b: None, ["3"], grpc.StatusCode.FAILED_PRECONDITION, "no lease"),
    (lambda b: b.put("l1", [3], ready=False, state="scrubbing"), ["3"], grpc.StatusCode.FAILED_PRECONDITION,
     "scrubbing"),
    (lambda b: b.put("l1", [3], ready=False, state="leveling"), ["3"], grpc.StatusCode.FAILED_PRECONDITION,
     "leveling"),
    (lambda b: (b.put("l1", [3], ready=True), b.put("l2", [4], ready=True)), ["3", "4"],
     grpc.StatusCode.FAILED_PRECONDITION, "different leases"),
    (lambda b: b.put("l1", [3], ready=True), ["3", "99"], grpc.StatusCode.NOT_FOUND, "unknown"),
    (lambda b: b.put("l1", ["GPU-x"], ready=True), ["GPU-x"], grpc.StatusCode.NOT_FOUND, "unknown"),
    (lambda b: None, [], grpc.StatusCode.INVALID_ARGUMENT, "no devices"),
])
def test_allocate_refuses(running, book, setup, ids, code, text):
    _, _, stub = running
    setup(book)
    with pytest.raises(grpc.RpcError) as caught:
        _allocate(stub, ids)
    assert caught.value.code() == code and text in caught.value.details()
    book.put("ok", [0], ready=True)
    assert _allocate(stub, ["0"]).container_responses  # the plugin still serves after a refusal


def test_allocate_refuses_unhealthy_gpu(running, book, source):
    _, _, stub = running
    book.put("l1", [5], ready=True)
    source.set_health(5, False)
    with pytest.raises(grpc.RpcError) as caught:
        _allocate(stub, ["5"])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_allocate_device_specs_mode(plugin_dir, source, book):
    book.put("l1", [1, 2], ready=True)
    servicer = DevicePluginServicer(source, book, mode=AllocateMode.BOTH)
    plugin = DevicePluginServer(servicer, plugin_dir=plugin_dir)
    plugin.start()
    try:
        with grpc.insecure_channel(f"unix://{plugin.socket_path}") as channel:
            [container] = _allocate(api_pb2_grpc.DevicePluginStub(channel), ["1", "2"]).container_responses
        assert [(d.host_path, d.container_path, d.permissions) for d in container.devices] == [
            ("/dev/vfio/61", "/dev/vfio/61", "rw"), ("/dev/vfio/62", "/dev/vfio/62", "rw")]
        assert [d.name for d in container.cdi_devices] == ["nvidia.com/gpu=1", "nvidia.com/gpu=2"]
    finally:
        plugin.stop(grace=0)


def test_preferred_allocation_prefers_the_leases_gpus(running, book):
    _, _, stub = running
    book.put("l1", [4, 5], ready=False, state="scrubbing")
    book.put("l2", [2, 3], ready=True)

    def prefer(available, size, must=()):
        request = api_pb2.PreferredAllocationRequest(container_requests=[api_pb2.ContainerPreferredAllocationRequest(
            available_deviceIDs=available, must_include_deviceIDs=list(must), allocation_size=size)])
        [container] = stub.GetPreferredAllocation(request, timeout=5).container_responses
        return list(container.deviceIDs)

    everything = [str(i) for i in range(8)]
    assert prefer(everything, 2) == ["2", "3"]
    assert prefer(everything, 2, must=["3"]) == ["2", "3"]
    assert prefer(["0", "1", "4", "5"], 2) == ["0", "1"]  # no ready lease fits: any fitting set


def test_pre_start_container_is_a_no_op(running):
    _, _, stub = running
    stub.PreStartContainer(api_pb2.PreStartContainerRequest(devices_ids=["0"]), timeout=5)
