"""A simulated server's PCI tree, built from the platform and board variant (hardware/platforms.py).

Besides the GPUs, NVSwitches and the Switchtec endpoint it holds the devices every real server
has and the agent must ignore: the BMC's VGA (1a03:2000), a NIC, host bridge and ports, so the
discovery code is tested against the same noise it meets on a real host.

A board variant's faults are built too: a NIC in a GPU's IOMMU group (`nic_in_gpu_group`, at the
next bus number, as behind a switch without ACS) and a GPU bound to the host's `nvidia` driver
(`host_driver_gpus`) instead of vfio-pci.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.platforms import (
    CLASS_MEMORY_CONTROLLER,
    CLASS_VGA,
    NVIDIA_VENDOR_ID,
    SWITCH_GROUPS_SHARED,
    SWITCHTEC_DEVICE_ID,
    SWITCHTEC_VENDOR_ID,
    BoardVariant,
    Platform,
)
from hardware.types import DeviceKind, PciDevice

CLASS_HOST_BRIDGE = 0x060000
CLASS_PCI_BRIDGE = 0x060400
CLASS_ETHERNET = 0x020000
NVSWITCH_SUBSYSTEM = (0x10DE, 0x1796)
PASSTHROUGH_DRIVER = "vfio-pci"
HOST_GPU_DRIVER = "nvidia"
NIC_IDS = (0x15B3, 0x1021)  # Mellanox ConnectX-7
NIC_SUBSYSTEM = (0x15B3, 0x0041)


@dataclass(slots=True)
class SimPciDevice:
    """One PCI function; only `driver` changes at run time (bind/unbind)."""

    address: str
    kind: DeviceKind | None  # None: a device the agent does not manage
    vendor_id: int
    device_id: int
    class_code: int
    iommu_group: int
    numa_node: int
    driver: str | None
    module_id: int | None = None
    subsystem_vendor_id: int = 0
    subsystem_device_id: int = 0

    def snapshot(self) -> PciDevice:
        assert self.kind is not None
        return PciDevice(
            address=self.address,
            kind=self.kind,
            vendor_id=self.vendor_id,
            device_id=self.device_id,
            class_code=self.class_code,
            iommu_group=self.iommu_group,
            driver=self.driver,
            numa_node=self.numa_node,
            module_id=self.module_id,
            subsystem_vendor_id=self.subsystem_vendor_id,
            subsystem_device_id=self.subsystem_device_id,
        )


def full_bdf(bdf: str) -> str:
    """ "18:00.0" → "0000:18:00.0" (the form sysfs and the agent use)."""
    return bdf if bdf.count(":") == 2 else f"0000:{bdf}"


def _noise() -> list[SimPciDevice]:
    # IOMMU group numbers below every platform's GPU/switch groups, so they never collide.
    return [
        SimPciDevice("0000:00:00.0", None, 0x8086, 0x09A2, CLASS_HOST_BRIDGE, 0, 0, None),
        SimPciDevice("0000:00:01.0", None, 0x8086, 0x347A, CLASS_PCI_BRIDGE, 1, 0, "pcieport"),
        SimPciDevice("0000:e0:00.0", None, 0x1A03, 0x1150, CLASS_PCI_BRIDGE, 2, 1, None),
        SimPciDevice("0000:e1:00.0", None, 0x1A03, 0x2000, CLASS_VGA, 2, 1, "ast", None, 0x15D9, 0x1C48),
        SimPciDevice("0000:f1:00.0", None, 0x15B3, 0x1021, CLASS_ETHERNET, 3, 1, "mlx5_core", None, 0x15B3, 0x0041),
    ]


def _nic_beside(gpu_address: str, group: int, numa: int) -> SimPciDevice:
    """A NIC on the bus after the GPU's, in the GPU's IOMMU group (no ACS between them)."""
    domain, bus, rest = gpu_address.split(":")
    address = f"{domain}:{int(bus, 16) + 1:02x}:{rest}"
    return SimPciDevice(address, None, *NIC_IDS, CLASS_ETHERNET, group, numa, "mlx5_core", None, *NIC_SUBSYSTEM)


def build_pci_tree(platform: Platform, variant: BoardVariant) -> list[SimPciDevice]:
    """All PCI functions of one server, sorted by address (the order sysfs lists them)."""
    devices = _noise()
    sub_vendor, sub_device = platform.gpu_subsystem
    for bdf, module, group, numa in zip(
        variant.gpu_bdfs, variant.module_ids, variant.gpu_iommu_groups, variant.gpu_numa, strict=True
    ):
        if bdf in variant.nic_in_gpu_group:
            devices.append(_nic_beside(full_bdf(bdf), group, numa))
        devices.append(
            SimPciDevice(
                full_bdf(bdf),
                DeviceKind.GPU,
                NVIDIA_VENDOR_ID,
                platform.gpu_device_id,
                platform.gpu_class,
                group,
                numa,
                HOST_GPU_DRIVER if bdf in variant.host_driver_gpus else PASSTHROUGH_DRIVER,
                module,
                sub_vendor,
                sub_device,
            )
        )
    shared = variant.switch_grouping == SWITCH_GROUPS_SHARED
    for i, bdf in enumerate(variant.switch_bdfs):
        group = variant.switch_iommu_groups[0 if shared else i]
        devices.append(
            SimPciDevice(
                full_bdf(bdf),
                DeviceKind.NVSWITCH,
                NVIDIA_VENDOR_ID,
                platform.nvswitch_device_id,
                0x068000,
                group,
                0,
                PASSTHROUGH_DRIVER,
                None,
                *NVSWITCH_SUBSYSTEM,
            )
        )
    if variant.switch_bridge_bdf:
        # The common bridge above the switches: a Switchtec port, class PCI-to-PCI bridge.
        devices.append(
            SimPciDevice(
                full_bdf(variant.switch_bridge_bdf),
                None,
                SWITCHTEC_VENDOR_ID,
                SWITCHTEC_DEVICE_ID,
                CLASS_PCI_BRIDGE,
                4,
                0,
                "pcieport",
            )
        )
    if variant.switchtec_bdf:
        # The management endpoint shares the switches' group when they are grouped (Supermicro).
        group = variant.switch_iommu_groups[0] if shared else 5
        devices.append(
            SimPciDevice(
                full_bdf(variant.switchtec_bdf),
                DeviceKind.SWITCH_MGMT,
                SWITCHTEC_VENDOR_ID,
                SWITCHTEC_DEVICE_ID,
                CLASS_MEMORY_CONTROLLER,
                group,
                0,
                PASSTHROUGH_DRIVER,
            )
        )
    return sorted(devices, key=lambda d: d.address)
