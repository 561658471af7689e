"""The simulator's sysfs tree read by LinuxHost's discovery gives the SimHost's own inventory.

This keeps the simulator's PCI model and the real host's reader in one format: if either drifts
(a link layout, a class code, a group), discovery on the written folder stops matching.
"""

from __future__ import annotations

import pytest

from hardware.linux.boardmap import load_board_map
from hardware.linux.fabric_manager import FabricManager
from hardware.linux.host import LinuxHost
from hardware.linux.records import GpuRecordStore
from hardware.linux.service_vm import ServiceVms
from hardware.platforms import PLATFORMS
from hardware.types import Inventory

sim_host = pytest.importorskip("simulator.host")
sim_sysfs = pytest.importorskip("simulator.sysfs")

VARIANTS = [(p.key, v.key) for p in PLATFORMS.values() for v in p.variants]


def gpu_view(inv: Inventory) -> dict[str, tuple]:
    return {
        g.pci.address: (
            g.module_id,
            g.pci.module_id,
            g.pci.iommu_group,
            g.pci.numa_node,
            g.pci.vendor_id,
            g.pci.device_id,
            g.pci.class_code,
            g.pci.subsystem_vendor_id,
            g.pci.subsystem_device_id,
            g.pci.driver,
            g.alone_in_iommu_group,
            g.isolation_reason,
            g.uuid,
            g.serial,
            g.vram_mib,
            g.firmware_version,
        )
        for g in inv.gpus
    }


def linux_host_on(tmp_path, sim) -> LinuxHost:
    root = sim_sysfs.write_sysfs(sim, tmp_path / "sys")
    board = load_board_map(sim_sysfs.write_board_map(sim, tmp_path / "board.json"))
    return LinuxHost(
        board_map=board,
        sysfs_root=root,
        fabric_manager=FabricManager(runner=lambda argv, timeout: None),  # not called here
        service_vms=ServiceVms("test:///default", require_nodedevs=False),
        records=GpuRecordStore(sim_sysfs.write_gpu_records(sim, tmp_path / "records")),
        hostname=sim.hostname,
    )


@pytest.mark.parametrize(("platform_key", "variant_key"), VARIANTS)
def test_discovery_on_the_simulators_tree_matches_its_inventory(tmp_path, platform_key, variant_key):
    features = {"iommu_backend": "iommufd", "hugepages": True} if variant_key == "dgx" else {}
    sim = sim_host.SimHost("sim-1", platform_key, variant_key, seed=7, **features)
    expected = sim.inventory()
    got = linux_host_on(tmp_path, sim).inventory()

    assert (got.platform, got.variant) == (expected.platform, expected.variant)
    assert gpu_view(got) == gpu_view(expected)
    assert sorted(got.nvswitches, key=lambda d: d.address) == sorted(expected.nvswitches, key=lambda d: d.address)
    assert got.switch_mgmt == expected.switch_mgmt
    assert (got.iommu_backend, got.hugepages) == (expected.iommu_backend, expected.hugepages)
    variant = sim.variant
    assert {g.pci.address for g in got.gpus if not g.isolated} == {
        f"0000:{bdf}" for bdf in (*variant.nic_in_gpu_group, *variant.host_driver_gpus)
    }


def test_a_lost_gpu_is_missing_in_both(tmp_path):
    sim = sim_host.SimHost("sim-1", "hgx-h100-8", "supermicro", seed=7)
    lost = next(iter(sim.gpus.values()))
    lost.lost = True
    assert gpu_view(linux_host_on(tmp_path, sim).inventory()) == gpu_view(sim.inventory())
