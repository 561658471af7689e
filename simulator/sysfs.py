"""Write a simulated server's PCI tree as a sysfs-shaped folder, and its board map as JSON.

The format LinuxHost's discovery reads (agreed with its owner; tests compare both inventories):

    ROOT/bus/pci/devices/<BDF>/            one folder per PCI function, e.g. 0000:18:00.0
        vendor device class                "0x10de\n", "0x2330\n", "0x030200\n"
        subsystem_vendor subsystem_device  "0x10de\n", "0x16c1\n"
        numa_node                          "0\n"
        driver_override                    "vfio-pci\n" for passthrough devices, else "(null)\n"
        iommu_group -> ../../../../kernel/iommu_groups/<N>
        driver -> ../../drivers/<name>     absent when no driver is bound
    ROOT/bus/pci/drivers/<name>/<BDF> -> ../../devices/<BDF>
    ROOT/kernel/iommu_groups/<N>/devices/<BDF> -> ../../../../bus/pci/devices/<BDF>

Noise the agent must skip is included: host bridge and root port, the BMC's VGA (1a03:2000) and
its bridge, a NIC, and on Supermicro the Switchtec bridge above the NVSwitches (class 0x0604).

The board map (`write_board_map`) is the JSON hardware/linux/boardmap.py reads — module id → BDF,
which a host without the NVIDIA driver cannot read, recorded once per board:

    {"platform": "hgx-h100-8", "variant": "supermicro", "modules": {"1": "0000:3a:00.0", ...},
     "hostname": ..., "host": {"kernel": ..., "plug_mode": ..., ...}}   (the last two: extras)

`write_gpu_records` writes what a service VM with the driver reports per GPU, in the format of
hardware/linux/records.py (one `<BDF>.json` each: uuid, serial, vram_mib, firmware_version).
Together with the sysfs folder they let LinuxHost rebuild exactly SimHost's inventory.
Host features go to sysfs where Linux has them: 1 GiB huge pages
(`kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages`) and iommufd (`class/misc/iommu`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from simulator.host import SimHost

HUGEPAGES_1G = Path("kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
IOMMUFD_MISC = Path("class/misc/iommu")


def _write(path: Path, text: str) -> None:
    path.write_text(text + "\n")


def _link(link: Path, target: str) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link)


def write_sysfs(host: SimHost, root: Path) -> Path:
    """Write `host`'s current PCI tree (lost GPUs are absent, drivers as bound) under `root`."""
    root = Path(root)
    devices_dir = root / "bus" / "pci" / "devices"
    drivers_dir = root / "bus" / "pci" / "drivers"
    groups_dir = root / "kernel" / "iommu_groups"
    devices_dir.mkdir(parents=True, exist_ok=True)
    drivers_dir.mkdir(parents=True, exist_ok=True)
    groups_dir.mkdir(parents=True, exist_ok=True)
    lost = {g.pci.address for g in host.gpus.values() if g.lost}
    for dev in host.devices:
        if dev.address in lost:
            continue  # fell off the bus: gone from sysfs until the host reboots
        d = devices_dir / dev.address
        d.mkdir(exist_ok=True)
        _write(d / "vendor", f"0x{dev.vendor_id:04x}")
        _write(d / "device", f"0x{dev.device_id:04x}")
        _write(d / "class", f"0x{dev.class_code:06x}")
        _write(d / "subsystem_vendor", f"0x{dev.subsystem_vendor_id:04x}")
        _write(d / "subsystem_device", f"0x{dev.subsystem_device_id:04x}")
        _write(d / "numa_node", str(dev.numa_node))
        _write(d / "driver_override", dev.driver if dev.driver == "vfio-pci" else "(null)")
        group = groups_dir / str(dev.iommu_group) / "devices"
        group.mkdir(parents=True, exist_ok=True)
        _link(group / dev.address, f"../../../../bus/pci/devices/{dev.address}")
        _link(d / "iommu_group", f"../../../../kernel/iommu_groups/{dev.iommu_group}")
        if dev.driver:
            (drivers_dir / dev.driver).mkdir(exist_ok=True)
            _link(drivers_dir / dev.driver / dev.address, f"../../devices/{dev.address}")
            _link(d / "driver", f"../../drivers/{dev.driver}")
    hugepages = root / HUGEPAGES_1G
    hugepages.parent.mkdir(parents=True, exist_ok=True)
    _write(hugepages, "512" if host.hugepages else "0")
    if host.iommu_backend == "iommufd":
        (root / IOMMUFD_MISC).mkdir(parents=True, exist_ok=True)
    return root


def board_map(host: SimHost) -> dict:
    """The board map as a JSON-ready dict (see the module docstring)."""
    inv = host.inventory()
    return {
        "platform": host.platform.key,
        "variant": host.variant.key,
        "modules": {str(m): g.pci.address for m, g in sorted(host.gpus.items())},
        "hostname": host.hostname,
        "host": {
            "kernel": inv.host_kernel,
            "iommu_backend": inv.iommu_backend,
            "plug_mode": inv.plug_mode,
            "hugepages": inv.hugepages,
            "fabric_manager_version": inv.fabric_manager_version,
            "agent_version": inv.agent_version,
            "qemu_version": inv.qemu_version,
            "guest_kernel": inv.guest_kernel,
            "guest_firmware": inv.guest_firmware,
            "init_system": inv.init_system,
        },
    }


def write_board_map(host: SimHost, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(board_map(host), indent=2, sort_keys=True) + "\n")
    return path


def write_gpu_records(host: SimHost, directory: Path) -> Path:
    """Per-GPU reports as a scrub/firmware VM would have recorded them (hardware/linux/records.py)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for gpu in host.gpus.values():
        report = {
            "uuid": gpu.uuid,
            "serial": gpu.serial,
            "vram_mib": host.platform.vram_mib,
            "firmware_version": gpu.firmware,
        }
        (directory / f"{gpu.pci.address}.json").write_text(json.dumps(report, sort_keys=True) + "\n")
    return directory
