"""A server's predicted VM boot, from the features its agent reported (`fleet.inventory`).

The console never asks the simulator or the host how long a boot will take: it feeds the recorded
`Server` fields to the pure `hardware.boot_model`, which the simulator also plays its boots with.
An unknown feature ("" — an older agent, or a seeded server) is predicted conservatively: the
model's oldest host kernel, an unknown QEMU, the seeds' guest (old kernel, OVMF, systemd).
"""

from __future__ import annotations

from fleet.models import Server
from hardware.boot_model import DEFAULT_GUEST_KERNEL, estimate_boot
from hardware.types import BootEstimate

# The Server fields the prediction reads (for `.only()` / `.values()` on hot paths).
BOOT_FIELDS = ("platform", "host_kernel_version", "qemu_version", "iommu_backend", "hugepages", "plug_mode",
               "guest_kernel_version", "guest_firmware", "init_system")


def server_boot_features(server: Server) -> dict:
    """The server's recorded features as keyword arguments of `estimate_boot` (and for display)."""
    return {
        "platform": server.platform,
        "host_kernel": server.host_kernel_version,
        "qemu_version": server.qemu_version,
        "iommu_backend": server.iommu_backend,
        "hugepages": server.hugepages,
        "plug_mode": server.plug_mode,
        "guest_kernel": server.guest_kernel_version or DEFAULT_GUEST_KERNEL,
        "firmware": server.guest_firmware or "ovmf",
        "init_system": server.init_system or "systemd",
    }


def server_boot_estimate(server: Server, *, gpus: int, guest_ram_gib: float) -> BootEstimate:
    """The model's phases for a VM with `gpus` GPUs and `guest_ram_gib` of RAM on this server."""
    return estimate_boot(gpus, guest_ram_gib=guest_ram_gib, **server_boot_features(server))

