"""What a simulated server's VMs boot on: host kernel, QEMU, IOMMU backend, huge pages, plug mode
and the Kata guest (kernel, firmware, init system), as a real node's agent would report them.

A simulated fleet gets a realistic mix (`fleet_mix`): hosts still on the seeds' Ubuntu 22.04
(5.15, hot-plug), hosts on Ubuntu 24.04 (6.8, IOMMUFD and huge pages) and hosts on 6.12 with
QEMU 9.2 and the NVIDIA Kata configuration (cold-plug, NVRC). The same `hardware.boot_model`
plays their VMs' boots, so their boot times differ the way the model says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from hardware.boot_model import parse_kernel_version

# The two-valued shorthand older options take (`--host-kernel old|fixed`).
KERNEL_ALIASES = {"old": "5.15.0-105-generic", "fixed": "6.12.9"}


def qemu_for_kernel(release: str) -> str:
    """The QEMU a distribution ships with this host kernel (Ubuntu 22.04: 6.2, 24.04: 8.2; 9.2
    alongside 6.12+ hosts)."""
    version = parse_kernel_version(release) or (5, 15)
    if version < (6, 8):
        return "6.2.0"
    return "8.2.2" if version < (6, 12) else "9.2.0"


@dataclass(frozen=True)
class HostFeatures:
    """One server's boot-relevant features (the inventory's host features)."""

    host_kernel: str = KERNEL_ALIASES["old"]
    qemu_version: str = "6.2.0"
    iommu_backend: str = "vfio-type1"
    hugepages: bool = False
    plug_mode: str = "hot"
    guest_kernel: str = "5.15.0"
    guest_firmware: str = "ovmf"
    init_system: str = "systemd"

    @classmethod
    def build(cls, *, host_kernel: str = "old", qemu_version: str | None = None, **others) -> HostFeatures:
        """Features from options: `old`/`fixed` stand for a release; QEMU follows the kernel unless given."""
        release = KERNEL_ALIASES.get(host_kernel, host_kernel)
        return cls(host_kernel=release, qemu_version=qemu_for_kernel(release) if qemu_version is None else qemu_version,
                   **others)

    def boot_arguments(self) -> dict:
        """Keyword arguments of `hardware.boot_model.estimate_boot`."""
        return {
            "host_kernel": self.host_kernel, "qemu_version": self.qemu_version, "iommu_backend": self.iommu_backend,
            "hugepages": self.hugepages, "plug_mode": self.plug_mode, "guest_kernel": self.guest_kernel,
            "firmware": self.guest_firmware, "init_system": self.init_system,
        }


# The mix a simulated fleet is drawn from.
SEED_HOST = HostFeatures()  # seeds 000/001: Ubuntu 22.04, legacy VFIO, hot-plug, systemd guest
UBUNTU_2404 = HostFeatures(host_kernel="6.8.0-45-generic", qemu_version="8.2.2", iommu_backend="iommufd",
                           hugepages=True, guest_kernel="6.8.0")
KERNEL_612 = HostFeatures(host_kernel="6.12.9", qemu_version="9.2.0", iommu_backend="iommufd", hugepages=True,
                          plug_mode="cold", guest_kernel="6.12.8", init_system="nvrc")
PROFILES = (SEED_HOST, UBUNTU_2404, replace(UBUNTU_2404, plug_mode="cold"), KERNEL_612)


def fleet_mix(count: int, seed: int) -> list[HostFeatures]:
    """`count` hosts' features, deterministic from `seed`: every profile in turn, in an order the
    seed shuffles, so even a small fleet shows old and new hosts side by side."""
    order = list(PROFILES)
    random.Random(seed).shuffle(order)
    return [order[i % len(order)] for i in range(count)]
