"""SimHost: PCI tree per board variant, determinism, faults, VMs on the accelerated clock."""

from __future__ import annotations

import pytest

from hardware.boot_model import estimate_boot
from hardware.exceptions import FailedPrecondition
from hardware.platforms import CLASS_BRIDGE_OTHER, PLATFORMS, SWITCH_GROUPS_SHARED
from hardware.types import VmState
from simulator.clock import SimClock
from simulator.host import SimHost

VARIANTS = [(p.key, v.key) for p in PLATFORMS.values() for v in p.variants]


@pytest.mark.parametrize(("platform", "variant"), VARIANTS)
def test_pci_tree_follows_the_board_variant(platform, variant):
    host = SimHost("h", platform, variant)
    plat, var = host.platform, host.variant
    inv = host.inventory()
    assert len(inv.gpus) == plat.gpu_count and len(inv.nvswitches) == plat.nvswitch_count
    assert {g.pci.address: g.module_id for g in inv.gpus} == {f"0000:{b}": m for b, m in var.bdf_to_module().items()}
    assert [g.module_id for g in inv.gpus] != sorted(g.module_id for g in inv.gpus)  # not PCI order
    shared = {f"0000:{b}" for b in var.nic_in_gpu_group}
    host_driver = {f"0000:{b}" for b in var.host_driver_gpus}
    assert {g.pci.address for g in inv.gpus if not g.alone_in_iommu_group} == shared
    assert {g.pci.address for g in inv.gpus if not g.isolated} == shared | host_driver
    assert {g.pci.address for g in inv.gpus if g.pci.driver == "nvidia"} == host_driver
    assert all(s.class_code == CLASS_BRIDGE_OTHER for s in inv.nvswitches)
    groups = {s.iommu_group for s in inv.nvswitches}
    if var.switch_grouping == SWITCH_GROUPS_SHARED:
        assert groups == {var.switch_iommu_groups[0]} and inv.switch_mgmt.iommu_group in groups
    else:
        assert len(groups) == plat.nvswitch_count


def test_board_faults_say_why_a_gpu_is_not_isolated_and_survive_a_reboot():
    nic = SimHost("h", "hgx-h100-8", "supermicro-nic-shared")
    [shared] = [g for g in nic.inventory().gpus if not g.isolated]
    assert shared.module_id == 1 and shared.pci.driver == "vfio-pci"
    assert shared.isolation_reason.startswith(f"not alone in its IOMMU group {shared.pci.iommu_group}")
    assert "0000:3b:00.0 (15b3:1021)" in shared.isolation_reason  # the NIC
    nic.activate_partition(7)  # GPU 1's own partition
    with pytest.raises(FailedPrecondition, match="cannot be assigned: not alone"):
        nic.start_vm("v", "pod", [1], 16)

    held = SimHost("h", "hgx-h100-8", "supermicro-host-driver")
    [bound] = [g for g in held.inventory().gpus if not g.isolated]
    assert bound.module_id == 6 and bound.alone_in_iommu_group and bound.pci.driver == "nvidia"
    assert bound.isolation_reason == "bound to the host's nvidia driver, not vfio-pci: the host holds it"
    held.bind_vfio(bound.pci.address)  # an operator moves it to vfio-pci: isolated from now on
    assert all(g.isolated for g in held.inventory().gpus)
    held.reboot()  # the host's driver claims it again at boot
    assert [g.module_id for g in held.inventory().gpus if not g.isolated] == [6]


def test_noise_devices_are_in_the_tree_but_not_the_inventory():
    host = SimHost("h", "hgx-h100-8", "supermicro")
    noise = {(d.vendor_id, d.device_id) for d in host.devices if d.kind is None}
    assert (0x1A03, 0x2000) in noise  # the BMC's VGA
    inventoried = {d.pci.address for d in host.inventory().gpus}
    assert all(d.address not in inventoried for d in host.devices if d.kind is None)


def test_identity_is_deterministic_per_seed():
    a, b = SimHost("h1", "hgx-h100-8", seed=3), SimHost("h1", "hgx-h100-8", seed=3)
    assert a.inventory() == b.inventory()
    c = SimHost("h1", "hgx-h100-8", seed=4)
    assert a.inventory().gpus[0].uuid != c.inventory().gpus[0].uuid
    uuids = {g.uuid for g in a.inventory().gpus}
    assert len(uuids) == 8 and all(u.startswith("GPU-") for u in uuids)


def test_vm_follows_the_boot_model_on_the_clock():
    clock = SimClock(1.0)
    host = SimHost("h", "hgx-h100-8", clock=clock, host_kernel="fixed", plug_mode="cold")
    host.activate_partition(0)
    vm = host.start_vm("v", "pod", range(1, 9), 512, workload_seconds=600)
    expected = estimate_boot(
        8, platform="hgx-h100-8", host_kernel="6.12.9", qemu_version="9.2.0", plug_mode="cold", guest_ram_gib=512
    )
    # Each phase scatters around the model's prediction (seeded by the VM's id), within bounds.
    took = [end - start for _, start, end in host.vms["v"].phase_bounds]
    ratios = [t / s for t, (_, s) in zip(took, expected.phases, strict=True) if s]
    assert all(0.75 <= r <= 1.5 for r in ratios) and len({round(r, 6) for r in ratios}) > 1
    assert vm.state is VmState.BOOTING
    clock.advance(sum(took) - 1)
    assert host.get_vm("v").state is VmState.BOOTING
    clock.advance(2)
    info = host.get_vm("v")
    assert info.state is VmState.RUNNING
    assert [p.phase for p in info.phases if not p.final] == [n for n, _ in expected.phases]
    clock.advance(600)
    assert host.get_vm("v").state is VmState.SUCCEEDED
    host.deactivate_partition(0)  # the VM is done: allowed


def test_stopping_a_booting_vm_ends_its_watch():
    clock = SimClock(1.0)
    host = SimHost("h", "hgx-h100-8", clock=clock)
    host.activate_partition(7)
    host.start_vm("v", "pod", [1], 64)
    watch = host.watch_boot("v")
    clock.advance(10)
    host.stop_vm("v")
    events = list(watch)
    assert events[-1].final and not events[-1].ok and events[-1].detail == "stopped"


def test_level_firmware_and_reset_refuse_a_gpu_in_a_vm():
    host = SimHost("h", "hgx-h100-8", clock=SimClock(10_000))
    host.activate_partition(8)
    host.start_vm("v", "pod", [2], 8)
    for call in (host.level_firmware, host.reset_gpu, host.scrub_gpu):
        with pytest.raises(FailedPrecondition, match="in use by VM v"):
            call(2)
    with pytest.raises(FailedPrecondition):
        host.unbind_vfio(host.gpus[2].pci.address)


def test_gpu_must_be_bound_to_vfio_to_start_a_vm():
    host = SimHost("h", "hgx-h100-8")
    host.unbind_vfio(host.gpus[1].pci.address)
    with pytest.raises(FailedPrecondition, match="vfio-pci"):
        host.start_vm("v", "pod", [1], 8)


def test_xid_79_fails_the_vm_and_hides_the_gpu_until_reboot():
    host = SimHost("h", "hgx-h100-8", clock=SimClock(1.0))
    host.activate_partition(3)
    host.start_vm("v", "pod", [1, 3], 8)
    sub = host.watch_health()
    host.inject_xid(3, 79)
    kinds = [next(sub).kind.value, next(sub).kind.value]
    sub.close()
    assert kinds == ["xid", "gpu_lost"]
    assert host.get_vm("v").state is VmState.FAILED
    assert 3 not in {g.module_id for g in host.inventory().gpus}
    assert any(3 in p.gpu_module_ids for p in host.list_partitions())  # still listed
    host.reboot()
    assert 3 in {g.module_id for g in host.inventory().gpus}
    assert host.get_vm("v").state is VmState.FAILED  # its history stays


def test_a_host_reports_the_features_its_vms_boot_on():
    host = SimHost("h", "hgx-h100-8", host_kernel="6.8.0-45-generic", plug_mode="cold", iommu_backend="iommufd")
    inv = host.inventory()
    assert (inv.host_kernel, inv.qemu_version, inv.plug_mode, inv.iommu_backend) == (
        "6.8.0-45-generic", "8.2.2", "cold", "iommufd")
    assert (inv.guest_kernel, inv.guest_firmware, inv.init_system) == ("5.15.0", "ovmf", "systemd")
