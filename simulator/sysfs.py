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

The board map (`write_board_map`) is what a trusted VM with the NVIDIA driver records once per
board, because a host without the driver cannot read it: module id → BDF, and per GPU its UUID,
serial, VRAM and firmware; plus the platform, variant and host features. JSON, schema 1:

    {"schema": 1, "hostname": ..., "platform": "hgx-h100-8", "variant": "supermicro",
     "gpus": [{"module_id": 2, "address": "0000:18:00.0", "uuid": "GPU-...", "serial": "...",
               "vram_mib": 81079, "firmware_version": "96.00.99.00.01"}, ...],
     "host": {"kernel": ..., "iommu_backend": ..., "plug_mode": ..., "hugepages": false,
              "fabric_manager_version": ..., "agent_version": ...}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from simulator.host import SimHost

BOARD_MAP_SCHEMA = 1


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
    return root


def board_map(host: SimHost) -> dict:
    """The board map as a JSON-ready dict (see the module docstring)."""
    inv = host.inventory()
    gpus = sorted(host.gpus.values(), key=lambda g: g.module_id)
    return {
        "schema": BOARD_MAP_SCHEMA,
        "hostname": host.hostname,
        "platform": host.platform.key,
        "variant": host.variant.key,
        "gpus": [
            {
                "module_id": g.module_id,
                "address": g.pci.address,
                "uuid": g.uuid,
                "serial": g.serial,
                "vram_mib": host.platform.vram_mib,
                "firmware_version": g.firmware,
            }
            for g in gpus
        ],
        "host": {
            "kernel": inv.host_kernel,
            "iommu_backend": inv.iommu_backend,
            "plug_mode": inv.plug_mode,
            "hugepages": inv.hugepages,
            "fabric_manager_version": inv.fabric_manager_version,
            "agent_version": inv.agent_version,
        },
    }


def write_board_map(host: SimHost, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(board_map(host), indent=2, sort_keys=True) + "\n")
    return path
