"""Every NodeAgent RPC over real gRPC (loopback port 0, mTLS) against the simulator, and error mapping."""

from __future__ import annotations

import dataclasses

import pytest

from hardware import boot_model
from hardware.exceptions import (
    AgentUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PartitionInUse,
)
from hardware.types import (
    BootPhaseEvent,
    FirmwareStatus,
    GpuHolder,
    HealthKind,
    Inventory,
    PartitionInfo,
    ScrubProgress,
    VmState,
)
from simulator.host import vm_pid
from tests.simulator.support import make_pki, served_host


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def agent(pki):
    with served_host(pki, variant="supermicro") as pair:
        yield pair


def _is_plain_dataclass(value) -> bool:
    return dataclasses.is_dataclass(value) and type(value).__module__ == "hardware.types"


def test_get_inventory_round_trips_exactly(agent):
    host, client = agent
    inv = client.get_inventory()
    assert isinstance(inv, Inventory)
    assert inv == host.inventory()
    assert len(inv.gpus) == host.platform.gpu_count
    assert inv.switch_mgmt is not None and inv.switch_mgmt.iommu_group == inv.nvswitches[0].iommu_group
    assert inv.host_kernel and inv.plug_mode == "hot" and inv.fabric_manager_version


def test_bind_and_unbind_vfio(agent):
    host, client = agent
    address = host.gpus[1].pci.address
    client.unbind_vfio(address)
    assert next(g for g in client.get_inventory().gpus if g.module_id == 1).pci.driver is None
    client.bind_vfio(address)
    assert next(g for g in client.get_inventory().gpus if g.module_id == 1).pci.driver == "vfio-pci"


def test_bind_errors_map_to_domain_exceptions(agent):
    _, client = agent
    with pytest.raises(InvalidArgument):
        client.bind_vfio("not-a-bdf")
    with pytest.raises(NotFound):
        client.bind_vfio("0000:77:00.0")
    with pytest.raises(InvalidArgument):
        client.bind_vfio("0000:e1:00.0")  # the BMC's VGA is not ours to pass through


def test_partitions_round_trip(agent):
    host, client = agent
    parts = client.list_partitions()
    assert all(isinstance(p, PartitionInfo) for p in parts)
    assert [p.partition_id for p in parts] == [p.id for p in host.platform.partitions]
    client.activate_partition(3)
    client.activate_partition(4)
    assert {p.partition_id for p in client.list_partitions() if p.active} == {3, 4}
    client.deactivate_partition(3)
    assert {p.partition_id for p in client.list_partitions() if p.active} == {4}
    with pytest.raises(FailedPrecondition, match="only accepted after a fabric-manager restart"):
        client.set_activated_partitions([1])  # running: the active set is not replaced
    assert {p.partition_id for p in client.list_partitions() if p.active} == {4}


def test_partition_in_use_and_bad_id(agent):
    _, client = agent
    client.activate_partition(1)
    with pytest.raises(PartitionInUse, match="in use"):
        client.activate_partition(3)  # GPUs 1 and 3 are in active partition 1
    with pytest.raises(PartitionInUse):
        client.activate_partition(1)
    with pytest.raises(InvalidArgument):
        client.activate_partition(99)
    with pytest.raises(FailedPrecondition):
        client.deactivate_partition(2)  # not active
    assert {p.partition_id for p in client.list_partitions() if p.active} == {1}  # blocker untouched


def test_fabric_manager_restart_is_unavailable_until_told(pki):
    with served_host(pki, accel=1.0) as (host, client):  # a real-time clock: the 60 s window stays open
        client.activate_partition(5)
        stream = client.watch_health()
        client.sim_admin().restart_fabric_manager()
        restarted = next(stream)  # announced on the health stream, so the console replays at once
        stream.cancel()
        assert (restarted.kind, restarted.module_id, restarted.hostname) == (
            HealthKind.FABRIC_MANAGER_RESTARTED, 0, host.hostname)
        assert "SetActivatedPartitions" in restarted.message
        with pytest.raises(AgentUnavailable, match="restarting"):
            client.list_partitions()
        client.set_activated_partitions([5])
        assert [p.partition_id for p in client.list_partitions() if p.active] == [5]
        client.sim_admin().restart_fabric_manager()
        host.clock.advance(61)
        with pytest.raises(AgentUnavailable, match="not running"):
            client.activate_partition(1)


def test_scrub_streams_progress(agent):
    _, client = agent
    steps = list(client.scrub_gpu(2))
    assert all(isinstance(s, ScrubProgress) for s in steps)
    assert [s.phase for s in steps] == ["boot-vm", "reset", "clear", "verify", "done"]
    assert steps[-1].done and steps[-1].ok and steps[-1].percent == 100.0


def test_scrub_refuses_gpu_in_running_vm_and_reports_injected_failure(agent):
    _, client = agent
    admin = client.sim_admin()
    client.activate_partition(7)
    admin.start_vm("vm-1", pod_name="p", gpu_module_ids=[1], guest_ram_gib=16)
    with pytest.raises(FailedPrecondition, match="in use by VM vm-1"):
        list(client.scrub_gpu(1))
    admin.fail_next_scrub(2)
    last = list(client.scrub_gpu(2))[-1]
    assert last.done and not last.ok
    assert list(client.scrub_gpu(2))[-1].ok  # only the next scrub fails


def test_a_vm_left_behind_is_listed_evicted_and_the_gpu_then_scrubs(agent):
    host, client = agent
    admin = client.sim_admin()
    client.activate_partition(7)
    admin.start_vm("vm-left", pod_name="p", gpu_module_ids=[1], guest_ram_gib=16)
    holder = GpuHolder(pid=vm_pid(host.hostname, "vm-left"), name="qemu-system-x86_64", vm_id="vm-left")
    assert client.gpu_holders(1) == (holder,)
    assert client.gpu_holders(2) == ()
    with pytest.raises(FailedPrecondition, match="in use by VM vm-left"):
        list(client.scrub_gpu(1))
    assert client.evict_gpu_holders(1) == (holder,)
    assert admin.get_vm("vm-left").state is VmState.STOPPED
    assert client.gpu_holders(1) == ()
    assert client.evict_gpu_holders(1) == ()  # nothing left: idempotent
    assert list(client.scrub_gpu(1))[-1].ok
    client.deactivate_partition(7)


def test_evicting_a_booting_vm_stops_it_and_frees_every_gpu_it_held(agent):
    _, client = agent
    admin = client.sim_admin()
    client.activate_partition(1)
    admin.start_vm("vm-4", pod_name="p", gpu_module_ids=[1, 2, 3, 4], guest_ram_gib=256)
    assert [h.vm_id for h in client.gpu_holders(3)] == ["vm-4"]
    assert [h.vm_id for h in client.evict_gpu_holders(3)] == ["vm-4"]
    assert all(client.gpu_holders(m) == () for m in (1, 2, 3, 4))
    client.deactivate_partition(1)  # no VM on its GPUs any more


def test_gpu_holders_of_an_unknown_gpu_are_not_found(agent):
    _, client = agent
    with pytest.raises(NotFound, match="no GPU with module id 42"):
        client.gpu_holders(42)
    with pytest.raises(NotFound):
        client.evict_gpu_holders(42)


def test_firmware_check_and_level(agent):
    host, client = agent
    pinned = host.platform.pinned_firmware
    assert client.check_firmware(4) == FirmwareStatus(4, pinned, pinned, True)
    client.sim_admin().flash_firmware(4, "96.00.74.00.01")
    assert client.check_firmware(4).matches is False
    assert client.level_firmware(4) == FirmwareStatus(4, pinned, pinned, True)
    with pytest.raises(NotFound):
        client.check_firmware(42)


def test_reset_gpu_applies_pending_row_remaps(agent):
    host, client = agent
    client.sim_admin().inject_xid(6, 63)
    assert host.gpus[6].row_remaps_pending == 1
    client.reset_gpu(6)
    assert (host.gpus[6].row_remaps, host.gpus[6].row_remaps_pending) == (1, 0)


def test_watch_health_delivers_xid_with_catalog_action(agent):
    _, client = agent
    stream = client.watch_health()
    client.sim_admin().inject_xid(5, 48)
    first, second = next(stream), next(stream)
    stream.cancel()
    assert (first.kind, first.xid, first.module_id, first.action) == (HealthKind.XID, 48, 5, "drain_and_reset")
    assert second.kind is HealthKind.ECC and second.ecc_uncorrected == 1
    assert list(stream) == []  # cancelled quietly


def test_thermal_and_nvlink_faults_stream(agent):
    host, client = agent
    stream = client.watch_health()
    admin = client.sim_admin()
    admin.inject_thermal(3)
    admin.inject_nvlink(3, count=7)
    thermal, nvlink = next(stream), next(stream)
    stream.cancel()
    assert thermal.kind is HealthKind.TEMPERATURE and thermal.temperature_c == host.platform.slowdown_temp_c
    assert thermal.message == "thermal slowdown"
    assert nvlink.kind is HealthKind.NVLINK and nvlink.nvlink_errors == 7


def test_xid_79_gpu_disappears_until_reboot(agent):
    _, client = agent
    admin = client.sim_admin()
    admin.inject_xid(8, 79)
    inv = client.get_inventory()
    assert 8 not in {g.module_id for g in inv.gpus}
    assert len(client.list_partitions()) == 15  # the fabric manager still lists all; the console hides
    with pytest.raises(FailedPrecondition, match="fell off the bus"):
        client.reset_gpu(8)
    admin.reboot_host()
    assert 8 in {g.module_id for g in client.get_inventory().gpus}


def test_watch_boot_streams_model_phases(agent):
    host, client = agent
    admin = client.sim_admin()
    client.activate_partition(1)
    vm = admin.start_vm("vm-4", pod_name="pod-4", gpu_module_ids=[1, 2, 3, 4], guest_ram_gib=256)
    assert vm.state is VmState.BOOTING
    events = list(client.watch_boot("vm-4"))
    assert all(isinstance(e, BootPhaseEvent) for e in events)
    assert events[-1].final and events[-1].ok and events[-1].phase == "running"
    phases = [e for e in events if not e.final]
    assert [e.phase for e in phases] == list(boot_model.PHASES)
    total = (phases[-1].ended_at - phases[0].started_at).total_seconds()
    expected = host.vms["vm-4"].boot_end - host.vms["vm-4"].started  # the model's phases, scattered
    assert total == pytest.approx(expected, abs=0.01)  # real-scale durations on an accelerated clock
    assert admin.get_vm("vm-4").state is VmState.RUNNING
    with pytest.raises(FailedPrecondition):
        client.deactivate_partition(1)  # a VM runs on its GPUs
    admin.stop_vm("vm-4")
    client.deactivate_partition(1)


def test_vm_without_active_partition_fails_with_cuda_802(agent):
    _, client = agent
    admin = client.sim_admin()
    admin.start_vm("vm-x", pod_name="p", gpu_module_ids=[2], guest_ram_gib=8)
    final = list(client.watch_boot("vm-x"))[-1]
    assert final.final and not final.ok and "802" in final.detail
    assert admin.get_vm("vm-x").state is VmState.FAILED


def test_vm_workload_succeeds_and_vms_are_listed(agent):
    host, client = agent
    admin = client.sim_admin()
    client.activate_partition(8)
    admin.start_vm("vm-w", pod_name="p", gpu_module_ids=[2], guest_ram_gib=8, workload_seconds=60)
    host.clock.advance(10_000)
    assert admin.get_vm("vm-w").state is VmState.SUCCEEDED
    assert [v.vm_id for v in admin.list_vms()] == ["vm-w"]
    with pytest.raises(NotFound):
        admin.get_vm("nope")


def test_start_vm_errors(agent):
    _, client = agent
    admin = client.sim_admin()
    client.activate_partition(0)
    admin.start_vm("a", pod_name="p", gpu_module_ids=[1], guest_ram_gib=8)
    with pytest.raises(FailedPrecondition, match="in use"):
        admin.start_vm("b", pod_name="p", gpu_module_ids=[1, 2], guest_ram_gib=8)
    with pytest.raises(InvalidArgument):
        admin.start_vm("c", pod_name="p", gpu_module_ids=[2, 2], guest_ram_gib=8)
    with pytest.raises(NotFound):
        admin.start_vm("d", pod_name="p", gpu_module_ids=[9], guest_ram_gib=8)


def test_watch_boot_unknown_vm_is_not_found(agent):
    _, client = agent
    with pytest.raises(NotFound):
        list(client.watch_boot("missing"))


def test_clock_admin(agent):
    host, client = agent
    admin = client.sim_admin()
    before = admin.get_clock()
    after = admin.set_clock(advance_seconds=3600, acceleration=100)
    assert after.acceleration == 100 and host.clock.acceleration == 100
    assert (after.now - before.now).total_seconds() >= 3600


def test_results_are_dataclasses_not_protobuf(agent):
    _, client = agent
    client.activate_partition(7)
    client.sim_admin().start_vm("vm-d", pod_name="p", gpu_module_ids=[1], guest_ram_gib=8)
    values = [client.get_inventory(), *client.list_partitions(), client.check_firmware(1), *client.gpu_holders(1)]
    assert all(_is_plain_dataclass(v) for v in values)


def test_wrong_node_key_is_not_found(pki):
    with served_host(pki) as (_, client):
        from hardware.agent_client import AgentClient

        other = AgentClient(client.endpoint, credentials=pki.console, node="someone-else", timeout=5)
        with pytest.raises(NotFound):
            other.get_inventory()
        other.close()
