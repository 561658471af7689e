"""The sysfs-shaped folder and board map the simulator writes (LinuxHost's discovery reads them)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hardware.platforms import PLATFORMS
from simulator.host import SimHost
from simulator.sysfs import write_board_map, write_gpu_records, write_sysfs

VARIANTS = [(p.key, v.key) for p in PLATFORMS.values() for v in p.variants]


def test_layout(tmp_path):
    host = SimHost("h", "hgx-h100-8", "supermicro")
    root = write_sysfs(host, tmp_path)
    dev = root / "bus/pci/devices/0000:18:00.0"
    assert (dev / "vendor").read_text() == "0x10de\n"
    assert (dev / "device").read_text() == "0x2330\n"
    assert (dev / "class").read_text() == "0x030200\n"
    assert (dev / "subsystem_device").read_text() == "0x16c1\n"
    assert (dev / "numa_node").read_text() == "0\n"
    assert (dev / "driver_override").read_text() == "vfio-pci\n"
    assert (dev / "iommu_group").resolve().name == "38"
    assert (dev / "driver").resolve() == (root / "bus/pci/drivers/vfio-pci").resolve()
    members = sorted(p.name for p in (root / "kernel/iommu_groups/24/devices").iterdir())
    assert members == ["0000:03:00.1", "0000:05:00.0", "0000:06:00.0", "0000:07:00.0", "0000:08:00.0"]
    for link in (root / "kernel/iommu_groups/24/devices").iterdir():
        assert link.resolve().is_dir()
    vga = root / "bus/pci/devices/0000:e1:00.0"
    assert (vga / "vendor").read_text() == "0x1a03\n" and (vga / "class").read_text() == "0x030000\n"
    assert (root / "bus/pci/devices/0000:04:00.0/class").read_text() == "0x060400\n"  # bridge above switches


def test_lost_gpu_is_absent_and_unbound_has_no_driver(tmp_path):
    host = SimHost("h", "hgx-h100-8", "supermicro")
    host.inject_xid(2, 79)  # module 2 is 18:00.0 on this board
    host.unbind_vfio(host.gpus[1].pci.address)
    root = write_sysfs(host, tmp_path)
    assert not (root / "bus/pci/devices/0000:18:00.0").exists()
    gone = root / f"bus/pci/devices/{host.gpus[1].pci.address}"
    assert not (gone / "driver").exists() and (gone / "driver_override").read_text() == "(null)\n"


def test_board_map_names_module_ids(tmp_path):
    host = SimHost("h", "dgx-h100")
    data = json.loads(write_board_map(host, tmp_path / "board.json").read_text())
    assert data["platform"] == "dgx-h100" and data["variant"] == "dgx"
    assert data["modules"]["1"] == "0000:c3:00.0"


@pytest.mark.parametrize(("platform", "variant"), VARIANTS)
def test_linux_host_discovers_the_same_inventory(tmp_path, platform, variant):
    linux = pytest.importorskip("hardware.linux.host")
    boardmap = pytest.importorskip("hardware.linux.boardmap")
    records = pytest.importorskip("hardware.linux.records")
    host = SimHost("node-1", platform, variant, seed=11, plug_mode="cold", hugepages=True)
    write_sysfs(host, tmp_path / "sys")
    write_board_map(host, tmp_path / "board.json")
    write_gpu_records(host, tmp_path / "records")
    sim = host.inventory()
    real = linux.LinuxHost(
        board_map=boardmap.load_board_map(tmp_path / "board.json"),
        sysfs_root=tmp_path / "sys",
        records=records.GpuRecordStore(tmp_path / "records"),
        hostname="node-1",
        plug_mode="cold",
        vm_features={name: getattr(sim, name) for name in linux.VM_FEATURES},
        agent_version=sim.agent_version,
        fabric_manager_version=sim.fabric_manager_version,
        follow_journal=False,
    ).inventory()
    assert dataclasses.replace(real, host_kernel=sim.host_kernel) == sim  # the kernel is this machine's
