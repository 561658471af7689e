"""The device plugin inside the node agent, end to end over real sockets.

A simulated host behind a real agent (loopback port 0, mTLS), the console's AgentClient setting
leases, the plugin on a real unix socket in a temporary kubelet folder, and a fake kubelet
(Registration service on `kubelet.sock` there) that sees it register and calls it back.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from hardware.agent_client import AgentClient
from hardware.deviceplugin.gen import api_pb2, api_pb2_grpc
from hardware.deviceplugin.node import NodeDevicePlugin
from hardware.types import GpuLeaseBinding
from simulator.agent import serve_sim_host
from simulator.clock import SimClock
from simulator.host import SimHost
from tests.simulator.support import FAST, make_pki

WAIT_S = 10.0  # bound on every wait for the plugin to catch up


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    def __init__(self):
        self.requests: list[api_pb2.RegisterRequest] = []

    def Register(self, request, context):
        self.requests.append(request)
        return api_pb2.Empty()


def start_kubelet(kubelet_dir: Path) -> tuple[FakeKubelet, grpc.Server]:
    kubelet = FakeKubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_RegistrationServicer_to_server(kubelet, server)
    assert server.add_insecure_port(f"unix://{kubelet_dir / 'kubelet.sock'}")
    server.start()
    return kubelet, server


def wait_for(predicate, timeout: float = WAIT_S, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@contextlib.contextmanager
def served_agent(pki, variant: str | None = None):
    """A SimHost behind a real agent (mTLS, loopback port 0): (host, agent server, console client)."""
    host = SimHost("node-a", "hgx-h100-8", variant, clock=SimClock(FAST))
    server = serve_sim_host(host, tls=pki.node)
    client = AgentClient(server.address, credentials=pki.console, timeout=5, retries=1, backoff=0.01)
    try:
        yield host, server, client
    finally:
        client.close()
        server.stop(grace=0)


def plugin_for(host, server, dirs) -> NodeDevicePlugin:
    """The device plugin on the agent's host and on the agent's own lease book (what SetGpuLeases fills)."""
    kubelet_dir, cdi_dir = dirs
    return NodeDevicePlugin(host, server.resolver.leases, kubelet_dir=kubelet_dir, cdi_dir=cdi_dir,
                            health_poll=0.2, kubelet_poll=0.05)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def dirs():
    base = Path(tempfile.mkdtemp(prefix="dpa", dir="/tmp"))  # unix socket paths must stay short
    kubelet_dir, cdi_dir = base / "kubelet", base / "cdi"
    kubelet_dir.mkdir()
    yield kubelet_dir, cdi_dir
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def node(pki, dirs):
    """(host, console client, plugin, fake kubelet, DevicePlugin stub) — everything running."""
    kubelet, kubelet_server = start_kubelet(dirs[0])
    with served_agent(pki) as (host, server, client):
        plugin = plugin_for(host, server, dirs)
        plugin.start()
        channel = grpc.insecure_channel(f"unix://{plugin.server.socket_path}")
        try:
            yield host, client, plugin, kubelet, api_pb2_grpc.DevicePluginStub(channel)
        finally:
            channel.close()
            plugin.stop()
            kubelet_server.stop(0)


def _allocate(stub, ids):
    request = api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])
    return stub.Allocate(request, timeout=5)


def _lease(lease_id, modules, phase):
    return GpuLeaseBinding(lease_id, "tenant-acme", f"lease-{lease_id}", tuple(modules), phase)


def test_registers_and_writes_the_cdi_spec(node, dirs):
    host, _, plugin, kubelet, _ = node
    _, cdi_dir = dirs
    assert plugin.server.wait_registered(1, WAIT_S)
    [request] = kubelet.requests
    assert (request.version, request.resource_name, request.endpoint) == (
        "v1beta1", "nvidia.com/gpu", plugin.server.socket_path.name)
    spec = json.loads(plugin.cdi_path.read_text())
    assert plugin.cdi_path.parent == cdi_dir and spec["kind"] == "nvidia.com/gpu"
    groups = {g.module_id: g.pci.iommu_group for g in host.inventory().gpus}
    assert {d["name"]: d["containerEdits"]["deviceNodes"][0]["path"] for d in spec["devices"]} == {
        str(m): f"/dev/vfio/{g}" for m, g in groups.items()}


def test_allocate_follows_the_leases_the_console_sets(node):
    _, client, _, _, stub = node
    client.set_gpu_leases([_lease("1", [1, 2], "Ready"), _lease("2", [3], "Scrubbing"),
                           _lease("3", [4], "Leveling")])

    [container] = _allocate(stub, ["1", "2"]).container_responses
    assert [d.name for d in container.cdi_devices] == ["nvidia.com/gpu=1", "nvidia.com/gpu=2"]

    for ids, text in ((["3"], "Scrubbing"), (["4"], "Leveling"), (["5"], "no lease")):
        with pytest.raises(grpc.RpcError) as caught:
            _allocate(stub, ids)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and text in caught.value.details()

    # Level-based: scrubbing done and levelled, the console names lease 2 Ready; lease 1 is gone.
    client.set_gpu_leases([_lease("2", [3], "Ready")])
    assert [d.name for d in _allocate(stub, ["3"]).container_responses[0].cdi_devices] == ["nvidia.com/gpu=3"]
    with pytest.raises(grpc.RpcError) as caught:
        _allocate(stub, ["1"])
    assert "no lease" in caught.value.details()


def test_xid_79_turns_the_gpu_unhealthy_in_list_and_watch(node):
    _, client, _, _, stub = node
    stream = stub.ListAndWatch(api_pb2.Empty(), timeout=WAIT_S + 5)
    try:
        first = next(stream)
        assert {d.ID: d.health for d in first.devices} == {str(i): "Healthy" for i in range(1, 9)}
        client.sim_admin().inject_xid(5, 79)
        started = time.monotonic()
        for response in stream:
            health = {d.ID: d.health for d in response.devices}
            if health["5"] == "Unhealthy":
                break
            assert time.monotonic() - started < WAIT_S
        assert health == {**{str(i): "Healthy" for i in range(1, 9)}, "5": "Unhealthy"}
    finally:
        stream.cancel()
    client.set_gpu_leases([_lease("1", [5], "Ready")])
    with pytest.raises(grpc.RpcError) as caught:
        _allocate(stub, ["5"])
    assert "unhealthy" in caught.value.details()


NOT_ISOLATED = [
    ("supermicro-nic-shared", 1, "not alone in its IOMMU group"),
    ("supermicro-host-driver", 6, "bound to the host's nvidia driver"),
]


@pytest.mark.parametrize(("variant", "module", "why"), NOT_ISOLATED, ids=[v for v, _, _ in NOT_ISOLATED])
def test_a_gpu_that_is_not_isolated_is_never_offered(pki, dirs, variant, module, why):
    """The agent says why; ListAndWatch leaves it out; the CDI spec has no entry for it; Allocate
    refuses it by name even for a ready lease."""
    _, kubelet_server = start_kubelet(dirs[0])
    with served_agent(pki, variant) as (host, server, client):
        [gpu] = [g for g in client.get_inventory().gpus if not g.isolated]
        assert gpu.module_id == module and why in gpu.isolation_reason
        plugin = plugin_for(host, server, dirs)
        plugin.start()
        channel = grpc.insecure_channel(f"unix://{plugin.server.socket_path}")
        stream = None
        try:
            stub = api_pb2_grpc.DevicePluginStub(channel)
            stream = stub.ListAndWatch(api_pb2.Empty(), timeout=WAIT_S + 5)
            offered = {str(i) for i in range(1, 9)} - {str(module)}
            assert {d.ID: d.health for d in next(stream).devices} == dict.fromkeys(offered, "Healthy")
            spec = json.loads(plugin.cdi_path.read_text())
            assert {d["name"] for d in spec["devices"]} == offered
            client.set_gpu_leases([_lease("1", [module], "Ready")])
            with pytest.raises(grpc.RpcError) as caught:
                _allocate(stub, [str(module)])
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"not isolated, never offered: GPU {module}: " in caught.value.details()
            assert why in caught.value.details()
            if variant == "supermicro-host-driver":
                # An operator binds it to vfio-pci through the agent: offered from the next refresh on.
                client.bind_vfio(gpu.pci.address)
                plugin.source.refresh()
                health = {d.ID: d.health for d in next(stream).devices}
                assert health == dict.fromkeys(offered | {str(module)}, "Healthy")
                [container] = _allocate(stub, [str(module)]).container_responses
                assert [d.name for d in container.cdi_devices] == [f"nvidia.com/gpu={module}"]
        finally:
            if stream is not None:
                stream.cancel()
            channel.close()
            plugin.stop()
            kubelet_server.stop(0)


def test_registers_again_after_a_kubelet_restart(node, dirs):
    _, client, plugin, kubelet, _ = node
    kubelet_dir, _ = dirs
    assert plugin.server.wait_registered(1, WAIT_S)
    # The kubelet restarts: its socket is recreated and it wipes the plugin sockets it finds.
    kubelet_sock = kubelet_dir / "kubelet.sock"
    kubelet_sock.unlink(missing_ok=True)
    plugin.server.socket_path.unlink()
    time.sleep(0.2)  # the old kubelet is gone for a moment
    restarted, restarted_server = start_kubelet(kubelet_dir)
    try:
        assert plugin.server.wait_registered(2, WAIT_S)
        [request] = restarted.requests
        assert request.endpoint == plugin.server.socket_path.name
        wait_for(plugin.server.socket_path.exists, what="plugin socket")
        # The plugin serves on its new socket.
        client.set_gpu_leases([_lease("1", [6], "Ready")])
        with grpc.insecure_channel(f"unix://{plugin.server.socket_path}") as channel:
            [container] = _allocate(api_pb2_grpc.DevicePluginStub(channel), ["6"]).container_responses
        assert [d.name for d in container.cdi_devices] == ["nvidia.com/gpu=6"]
    finally:
        restarted_server.stop(0)
    assert len(kubelet.requests) == 1


def test_waits_for_a_kubelet_that_is_not_up_yet(pki, dirs):
    with served_agent(pki) as (host, server, _):
        plugin = plugin_for(host, server, dirs)
        plugin.start()
        kubelet_server = None
        try:
            time.sleep(0.2)
            assert plugin.server.registrations == 0
            kubelet, kubelet_server = start_kubelet(dirs[0])
            assert plugin.server.wait_registered(1, WAIT_S)
            assert len(kubelet.requests) == 1
        finally:
            plugin.stop()
            if kubelet_server is not None:
                kubelet_server.stop(0)


def test_agent_command_line_runs_the_device_plugin(dirs):
    kubelet_dir, cdi_dir = dirs
    kubelet, kubelet_server = start_kubelet(kubelet_dir)
    port_file = kubelet_dir.parent / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hardware.agent", "--backend", "sim", "--insecure", "--hostname", "dp-node",
         "--port-file", str(port_file), "--device-plugin", "--kubelet-dir", str(kubelet_dir),
         "--cdi-dir", str(cdi_dir), "--kubelet-poll", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        def started():
            assert proc.poll() is None, proc.stdout.read().decode()
            return port_file.exists() and port_file.read_text().strip()

        port = wait_for(started, 30, "agent")
        wait_for(lambda: kubelet.requests, what="registration")
        [request] = kubelet.requests
        assert (cdi_dir / "gpu-console-nvidia-gpu.json").exists()
        with AgentClient(f"127.0.0.1:{port}", insecure=True, timeout=5) as client:
            client.set_gpu_leases([_lease("1", [3], "Ready"), _lease("2", [4], "Leveling")])
        with grpc.insecure_channel(f"unix://{kubelet_dir / request.endpoint}") as channel:
            stub = api_pb2_grpc.DevicePluginStub(channel)
            assert [d.name for d in _allocate(stub, ["3"]).container_responses[0].cdi_devices] == [
                "nvidia.com/gpu=3"]
            with pytest.raises(grpc.RpcError) as caught:
                _allocate(stub, ["4"])
            assert "Leveling" in caught.value.details()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        kubelet_server.stop(0)


def test_daemonset_runs_the_device_plugin_on_the_mounted_host_paths():
    import yaml

    from hardware.agent.__main__ import _parser

    root = Path(__file__).resolve().parents[2]
    daemonset = yaml.safe_load((root / "deploy" / "agent-daemonset.yaml").read_text())
    [container] = daemonset["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "hardware.agent"]
    args = _parser().parse_args(command[3:])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert args.device_plugin and {str(args.kubelet_dir), str(args.cdi_dir)} <= mounts


def test_standalone_plugin_reads_gpus_and_leases_from_the_agent(pki, dirs):
    from hardware.deviceplugin.__main__ import AgentHost, AgentLeaseBook

    _, kubelet_server = start_kubelet(dirs[0])
    with served_agent(pki) as (_, server, console):
        agent = AgentClient(server.address, credentials=pki.console, timeout=5, retries=0)
        plugin = NodeDevicePlugin(AgentHost(agent), AgentLeaseBook(agent), kubelet_dir=dirs[0], cdi_dir=dirs[1],
                                  health_poll=0.2, kubelet_poll=0.05)
        plugin.start()
        try:
            assert plugin.server.wait_registered(1, WAIT_S)
            console.set_gpu_leases([_lease("1", [7, 8], "Running"), _lease("2", [2], "Scrubbing")])
            with grpc.insecure_channel(f"unix://{plugin.server.socket_path}") as channel:
                stub = api_pb2_grpc.DevicePluginStub(channel)
                [container] = _allocate(stub, ["7", "8"]).container_responses
                assert [d.name for d in container.cdi_devices] == ["nvidia.com/gpu=7", "nvidia.com/gpu=8"]
                with pytest.raises(grpc.RpcError) as caught:
                    _allocate(stub, ["2"])
                assert "Scrubbing" in caught.value.details()
                console.sim_admin().inject_xid(8, 79)
                wait_for(lambda: not {d.index: d.healthy for d in plugin.source.devices()}[8], what="GPU 8 unhealthy")
        finally:
            plugin.stop()
            agent.close()
            kubelet_server.stop(0)


def test_a_lost_gpu_is_healthy_again_after_the_host_reboots(node):
    _, client, plugin, _, _ = node

    def health(index):
        return {d.index: d.healthy for d in plugin.source.devices()}[index]

    client.sim_admin().inject_xid(2, 79)
    wait_for(lambda: not health(2), what="GPU 2 unhealthy")
    assert all(health(i) for i in (1, 3, 4, 5, 6, 7, 8))
    client.sim_admin().reboot_host()
    wait_for(lambda: health(2), what="GPU 2 healthy after the reboot")


def test_gpu_lost_event_wins_over_a_stale_inventory():
    from dataclasses import replace
    from datetime import UTC, datetime

    from hardware.deviceplugin.inventory import InventoryDeviceSource
    from hardware.types import DeviceKind, GpuInfo, HealthEvent, HealthKind, Inventory, PciDevice

    def gpu(module_id):
        pci = PciDevice(f"0000:{module_id:02x}:00.0", DeviceKind.GPU, 0x10DE, 0x2330, 0x030200, 40 + module_id,
                        "vfio-pci", -1, module_id)
        return GpuInfo(pci, module_id, f"GPU-{module_id}", "s", 81559, "96.00")

    listed = [gpu(1), gpu(2)]
    source = InventoryDeviceSource(lambda: Inventory("n", "hgx-h100-8", "v", tuple(listed), (), None))
    changes = []
    source.subscribe(lambda: changes.append([d.healthy for d in source.devices()]))
    assert [(d.index, d.iommu_group, d.healthy, d.numa_node) for d in source.devices()] == [
        (1, 41, True, None), (2, 42, True, None)]

    lost = HealthEvent("n", 2, HealthKind.XID, datetime.now(UTC), xid=79)
    source.handle(lost)  # the inventory still lists GPU 2: the event decides
    assert changes == [[True, False]]
    assert not source.refresh() and [d.healthy for d in source.devices()] == [True, False]

    listed.pop()  # gone from the inventory: stays listed, Unhealthy
    source.refresh()
    assert [(d.index, d.healthy) for d in source.devices()] == [(1, True), (2, False)]
    listed.append(gpu(2))  # back after a reboot: a fresh GPU, Healthy
    assert source.refresh() and [d.healthy for d in source.devices()] == [True, True]
    source.handle(HealthEvent("n", 1, HealthKind.XID, datetime.now(UTC), xid=31))  # not a lost GPU
    assert [d.healthy for d in source.devices()] == [True, True]
    listed[1] = replace(gpu(2), isolation_reason="bound to the host's nvidia driver, not vfio-pci")
    assert source.refresh()  # once offered, it stays listed (no hole for the kubelet), Unhealthy
    assert [(d.index, d.healthy) for d in source.devices()] == [(1, True), (2, False)]
    assert source.not_offered() == {"2": "bound to the host's nvidia driver, not vfio-pci"}
