"""Discovery by walking sysfs trees built for every platform and board variant."""

from __future__ import annotations

import logging
import os

import pytest

from hardware.linux.pci import classify, normalize_address
from hardware.linux.sysfs import SysfsPci
from hardware.platforms import NVIDIA_VENDOR_ID, PLATFORMS, SWITCH_GROUPS_SHARED
from hardware.types import DeviceKind
from tests.hardware.fixtures.sysfs_tree import BMC_VGA, SysfsTree, build_platform_tree

VARIANTS = [(p.key, v.key) for p in PLATFORMS.values() for v in p.variants]


def full(bdf: str) -> str:
    return normalize_address(bdf)


@pytest.mark.parametrize(("platform_key", "variant_key"), VARIANTS)
def test_discovers_every_platform_and_variant(tmp_path, platform_key, variant_key):
    platform = PLATFORMS[platform_key]
    variant = platform.variant(variant_key)
    build_platform_tree(tmp_path, platform, variant_key)

    found = SysfsPci(tmp_path).discover()

    gpus = {g.function.address: g for g in found.gpus}
    assert set(gpus) == {full(b) for b in variant.gpu_bdfs}
    for bdf, group, numa in zip(variant.gpu_bdfs, variant.gpu_iommu_groups, variant.gpu_numa, strict=True):
        gpu = gpus[full(bdf)]
        assert gpu.function.iommu_group == group
        assert gpu.function.numa_node == numa
        assert gpu.function.device_id == platform.gpu_device_id
        assert (gpu.function.subsystem_vendor_id, gpu.function.subsystem_device_id) == platform.gpu_subsystem
        assert gpu.function.driver is None
        assert gpu.alone_in_iommu_group
    # NVSwitches are "Bridge: other" (0x0680), found and not skipped as PCI bridges.
    assert {s.address for s in found.nvswitches} == {full(b) for b in variant.switch_bdfs}
    assert all(s.kind is DeviceKind.NVSWITCH and s.class_code >> 8 == 0x0680 for s in found.nvswitches)
    assert found.switch_groups == frozenset(variant.switch_iommu_groups)
    if variant.switch_grouping == SWITCH_GROUPS_SHARED:
        (group,) = variant.switch_iommu_groups
        assert [m.address for m in found.switch_mgmt] == [full(variant.switchtec_bdf)]
        assert found.switch_mgmt[0].iommu_group == group
        expected = {full(b) for b in (*variant.switch_bdfs, variant.switchtec_bdf, variant.switch_bridge_bdf)}
        assert set(found.groups[group]) == expected
    else:
        assert found.switch_mgmt == ()
        assert all(len(found.groups[g]) == 1 for g in variant.switch_iommu_groups)
    # The BMC's VGA is neither a GPU nor anything else we manage.
    assert BMC_VGA[0] not in gpus
    assert found.function(BMC_VGA[0]) is None
    assert found.skipped == ()


def test_classify_by_vendor_and_class():
    assert classify(NVIDIA_VENDOR_ID, 0x2330, 0x030200) is DeviceKind.GPU
    assert classify(NVIDIA_VENDOR_ID, 0x1DB6, 0x030000) is DeviceKind.GPU  # display-capable GPU
    assert classify(0x1A03, 0x2000, 0x030000) is None  # BMC VGA
    assert classify(NVIDIA_VENDOR_ID, 0x22A3, 0x068000) is DeviceKind.NVSWITCH
    assert classify(NVIDIA_VENDOR_ID, 0x1234, 0x060400) is None  # a real PCI bridge
    assert classify(0x11F8, 0x4128, 0x058000) is DeviceKind.SWITCH_MGMT
    assert classify(0x11F8, 0x4128, 0x060400) is None  # a Switchtec port: same id, bridge class
    assert classify(NVIDIA_VENDOR_ID, 0x22A3, 0x040300) is None  # audio function


def test_gpu_bound_to_nvidia_driver_is_still_found(tmp_path):
    platform = PLATFORMS["hgx-h100-8"]
    build_platform_tree(tmp_path, platform, "supermicro", gpu_driver="nvidia")
    found = SysfsPci(tmp_path).discover()
    assert len(found.gpus) == platform.gpu_count
    assert {g.function.driver for g in found.gpus} == {"nvidia"}


def test_vga_class_nvidia_gpu_is_a_gpu(tmp_path):
    tree = SysfsTree(tmp_path)
    tree.add_device("0000:65:00.0", NVIDIA_VENDOR_ID, 0x2236, 0x030000, group=70)
    (gpu,) = SysfsPci(tmp_path).discover().gpus
    assert gpu.function.address == "0000:65:00.0"


def test_gpu_sharing_its_group_is_reported_not_alone(tmp_path, caplog):
    platform = PLATFORMS["dgx-h100"]
    variant = platform.variant("dgx")
    tree = build_platform_tree(tmp_path, platform, "dgx")
    # A NIC that lost its ACS isolation lands in the first GPU's group.
    tree.add_device("0000:1c:00.0", 0x15B3, 0x1021, 0x020700, group=variant.gpu_iommu_groups[0])
    with caplog.at_level(logging.WARNING):
        found = SysfsPci(tmp_path).discover()
    alone = {g.function.address: g.alone_in_iommu_group for g in found.gpus}
    assert alone[full(variant.gpu_bdfs[0])] is False
    assert sum(alone.values()) == platform.gpu_count - 1
    shared = next(g for g in found.gpus if g.function.address == full(variant.gpu_bdfs[0]))
    group = variant.gpu_iommu_groups[0]
    assert shared.isolation_reason == (
        f"not alone in its IOMMU group {group}: shares it with 0000:1c:00.0 (15b3:1021), "
        "which would go to the tenant too"
    )
    assert f"GPU {full(variant.gpu_bdfs[0])} is not isolated (not alone in its IOMMU group" in caplog.text
    assert "it will not be offered" in caplog.text


def test_pci_bridge_in_a_gpu_group_does_not_count(tmp_path):
    tree = SysfsTree(tmp_path)
    tree.add_device("0000:17:00.0", 0x1000, 0xC030, 0x060400, group=38, driver="pcieport")
    tree.add_device("0000:18:00.0", NVIDIA_VENDOR_ID, 0x2330, 0x030200, group=38)
    (gpu,) = SysfsPci(tmp_path).discover().gpus
    assert gpu.alone_in_iommu_group
    assert gpu.isolation_reason.startswith("bound to no driver")  # alone, but not on vfio-pci yet


def test_gpu_isolated_only_on_vfio_pci(tmp_path):
    tree = SysfsTree(tmp_path)
    tree.add_device("0000:18:00.0", NVIDIA_VENDOR_ID, 0x2330, 0x030200, group=38, driver="vfio-pci")
    tree.add_device("0000:2a:00.0", NVIDIA_VENDOR_ID, 0x2330, 0x030200, group=53, driver="nvidia")
    reasons = {g.function.address: g.isolation_reason for g in SysfsPci(tmp_path).discover().gpus}
    assert reasons == {
        "0000:18:00.0": "",
        "0000:2a:00.0": "bound to the host's nvidia driver, not vfio-pci: the host holds it",
    }


def test_gpu_without_iommu_group_is_not_offered(tmp_path):
    SysfsTree(tmp_path).add_device("0000:18:00.0", NVIDIA_VENDOR_ID, 0x2330, 0x030200, group=None)
    (gpu,) = SysfsPci(tmp_path).discover().gpus
    assert gpu.function.iommu_group is None
    assert not gpu.alone_in_iommu_group
    assert gpu.isolation_reason.startswith("no IOMMU group")


def test_missing_numa_affinity_reads_as_minus_one(tmp_path):
    tree = SysfsTree(tmp_path)
    path = tree.add_device("0000:18:00.0", NVIDIA_VENDOR_ID, 0x2330, 0x030200, group=38)
    (path / "numa_node").write_text("-1\n")
    (gpu,) = SysfsPci(tmp_path).discover().gpus
    assert gpu.function.numa_node == -1


def _break_garbage_vendor(tree: SysfsTree, bdf: str) -> None:
    (tree.device_dir(bdf) / "vendor").write_text("nvidia?\n")


def _break_dangling_group(tree: SysfsTree, bdf: str) -> None:
    link = tree.device_dir(bdf) / "iommu_group"
    link.unlink()
    os.symlink("../../../kernel/iommu_groups/9999", link)


def _break_dangling_driver(tree: SysfsTree, bdf: str) -> None:
    os.symlink("../../../bus/pci/drivers/gone", tree.device_dir(bdf) / "driver")


def _break_unreadable_class(tree: SysfsTree, bdf: str) -> None:
    (tree.device_dir(bdf) / "class").unlink()
    (tree.device_dir(bdf) / "class").mkdir()


def _break_missing_device_file(tree: SysfsTree, bdf: str) -> None:
    (tree.device_dir(bdf) / "device").unlink()


def _break_dangling_device_link(tree: SysfsTree, bdf: str) -> None:
    os.symlink("../../../devices/pci0000:00/0000:ff:00.0", tree.root / "bus/pci/devices/0000:ff:00.0")


def _break_group_name(tree: SysfsTree, bdf: str) -> None:
    link = tree.device_dir(bdf) / "iommu_group"
    link.unlink()
    (tree.root / "kernel/iommu_groups/x").mkdir()
    os.symlink("../../../kernel/iommu_groups/x", link)


@pytest.mark.parametrize(
    "breaker",
    [
        _break_garbage_vendor,
        _break_dangling_group,
        _break_dangling_driver,
        _break_unreadable_class,
        _break_missing_device_file,
        _break_dangling_device_link,
        _break_group_name,
    ],
)
def test_malformed_entry_is_logged_and_skipped(tmp_path, caplog, breaker):
    platform = PLATFORMS["hgx-h100-8"]
    tree = build_platform_tree(tmp_path, platform, "oem")
    victim = full(platform.variant("oem").gpu_bdfs[0])
    breaker(tree, victim)
    with caplog.at_level(logging.WARNING):
        found = SysfsPci(tmp_path).discover()
    assert found.skipped  # the broken entry, never a crash
    assert "malformed sysfs PCI entry" in caplog.text
    assert len(found.gpus) >= platform.gpu_count - 1
    assert len(found.nvswitches) == platform.nvswitch_count


def test_missing_sysfs_root_finds_nothing(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        found = SysfsPci(tmp_path / "nope").discover()
    assert found.gpus == () and found.nvswitches == ()
    assert "cannot list" in caplog.text
