"""How long a Kata VM with GPUs takes to boot, phase by phase (a pure model, HARDWARE.md).

The console imports it to predict a lease's boot time from a server's reported host features;
the simulator uses it to play VM boots. Everything that differs between hosts comes in as an
argument; the per-step costs are in `BootCoefficients`, documented with where they come from, and
can be replaced for calibration.

Observations the defaults reproduce (seed 001): old host kernel, GPUs hot-plugged one by one, old
guest kernel, systemd: a 1-GPU VM runs its pod after about 2 minutes, an 8-GPU VM after about 30.
Newer host kernel with cold-plug: an 8-GPU VM in a few minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hardware.platforms import Platform, get_platform
from hardware.types import BootEstimate

GB_PER_GIB = 1.073741824
HOST_KERNELS = ("old", "fixed")
PLUG_MODES = ("hot", "cold")
GUEST_KERNELS = ("old", "new")
INIT_SYSTEMS = ("systemd", "nvrc")
IOMMU_BACKENDS = ("vfio-type1", "iommufd")


@dataclass(frozen=True)
class BootCoefficients:
    """Per-step costs in seconds. Figures marked 'estimate' are not from a measurement."""

    vm_create_s: float = 2.0  # hypervisor process, firmware (estimate)
    pin_s_per_gb_4k: float = 0.25  # page zeroing dominates (HARDWARE.md)
    pin_s_per_gb_huge: float = 0.02  # 1 GiB pages (estimate)
    iommufd_pin_factor: float = 0.9  # IOMMUFD pins once for all devices (estimate)
    # Old kernels map the large BAR in 4 KiB steps: ~3.2–3.7 s per 128 GiB H100 BAR, GPU after GPU.
    bar_map_s_per_gib_old: float = 3.45 / 128
    bar_map_s_per_gib_fixed: float = 0.000_004  # huge chunks: well under a millisecond per BAR
    hotplug_s_per_gpu: float = 5.0  # ACPI/PCIe hot-plug handshake per device (estimate)
    guest_kernel_boot_s: float = 4.0  # estimate
    # Each BAR-sizing toggle of the command register makes the host unmap and remap the BAR.
    toggles_per_gpu_old_guest: int = 30  # 20–40 per boot
    toggles_per_gpu_new_guest: int = 2  # newer guests batch BAR sizing
    # A hot-plug makes an old guest re-size the BARs of GPUs already present (estimate, fitted to
    # the 30-minute 8-GPU observation); a new guest re-reads them once.
    rescan_toggles_old_guest: int = 14
    rescan_toggles_new_guest: int = 1
    remap_s_per_128gib_old: float = 2.5  # 2–3 s per toggle on an old host kernel
    remap_s_per_128gib_fixed: float = 0.002  # estimate
    driver_init_s_per_gpu: float = 4.0  # serial, "a few seconds each"
    init_systemd_s: float = 12.0  # systemd up to the units that start the kata-agent (estimate)
    init_nvrc_s: float = 1.5  # NVIDIA's minimal init (estimate)
    cdi_s_base: float = 2.0
    cdi_s_per_gpu: float = 1.0
    cdi_nvrc_factor: float = 0.25  # NVRC generates the CDI spec without systemd units (estimate)
    kata_agent_s: float = 1.5
    container_start_s: float = 2.0


DEFAULT_COEFFICIENTS = BootCoefficients()


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, not {value!r}")


def estimate_boot(
    gpus: int,
    *,
    platform: Platform | str,
    host_kernel: Literal["old", "fixed"],
    iommu_backend: str = "vfio-type1",
    plug_mode: Literal["hot", "cold"],
    hugepages: bool,
    guest_ram_gib: float,
    guest_kernel: Literal["old", "new"] = "old",
    init_system: Literal["systemd", "nvrc"] = "systemd",
    coefficients: BootCoefficients = DEFAULT_COEFFICIENTS,
) -> BootEstimate:
    """Predict a VM's boot phases (name, seconds) in order; the total is their sum.

    Hot-plug adds GPUs one after another after the guest kernel is up, each one mapped, announced
    and sized in turn (phases `hot-plug-gpu-<k>`); cold-plug maps all BARs before the guest starts.
    """
    if gpus < 0:
        raise ValueError("gpus must be >= 0")
    _check("host_kernel", host_kernel, HOST_KERNELS)
    _check("plug_mode", plug_mode, PLUG_MODES)
    _check("guest_kernel", guest_kernel, GUEST_KERNELS)
    _check("init_system", init_system, INIT_SYSTEMS)
    _check("iommu_backend", iommu_backend, IOMMU_BACKENDS)
    c = coefficients
    plat = get_platform(platform) if isinstance(platform, str) else platform
    bar_gib = plat.bar2_gib
    old_host = host_kernel == "old"
    old_guest = guest_kernel == "old"

    pin_rate = c.pin_s_per_gb_huge if hugepages else c.pin_s_per_gb_4k
    if iommu_backend == "iommufd":
        pin_rate *= c.iommufd_pin_factor
    bar_map = bar_gib * (c.bar_map_s_per_gib_old if old_host else c.bar_map_s_per_gib_fixed)
    remap = (bar_gib / 128) * (c.remap_s_per_128gib_old if old_host else c.remap_s_per_128gib_fixed)
    toggles = c.toggles_per_gpu_old_guest if old_guest else c.toggles_per_gpu_new_guest
    rescan_toggles = c.rescan_toggles_old_guest if old_guest else c.rescan_toggles_new_guest

    phases: list[tuple[str, float]] = [
        ("vm-create", c.vm_create_s),
        ("ram-pinning", guest_ram_gib * GB_PER_GIB * pin_rate),
    ]
    if plug_mode == "cold":
        phases += [
            ("host-bar-map", gpus * bar_map),
            ("guest-kernel-boot", c.guest_kernel_boot_s),
            ("guest-pci-enumeration", gpus * toggles * remap),
        ]
    else:
        phases.append(("guest-kernel-boot", c.guest_kernel_boot_s))
        for k in range(1, gpus + 1):
            # The k-th GPU: hot-plug handshake, host maps its BAR, the guest sizes it and re-sizes
            # the k-1 already present.
            sizing = (toggles + (k - 1) * rescan_toggles) * remap
            phases.append((f"hot-plug-gpu-{k}", c.hotplug_s_per_gpu + bar_map + sizing))
    cdi = c.cdi_s_base + c.cdi_s_per_gpu * gpus
    if init_system == "nvrc":
        cdi *= c.cdi_nvrc_factor
    phases += [
        ("driver-init", gpus * c.driver_init_s_per_gpu),
        ("init-system", c.init_systemd_s if init_system == "systemd" else c.init_nvrc_s),
        ("cdi-generation", cdi),
        ("kata-agent-ready", c.kata_agent_s),
        ("container-start", c.container_start_s),
    ]
    return BootEstimate(phases=tuple((name, round(seconds, 6)) for name, seconds in phases))


# The first kernel whose VFIO maps large BARs in huge chunks (huge-pfnmap faults for vfio-pci).
FIXED_KERNEL = (6, 12)


def kernel_generation(release: str) -> Literal["old", "fixed"]:
    """Classify a host kernel release ("5.15.0-105-generic") for the model; unparsable → "old"."""
    parts = release.split("-", 1)[0].split(".")
    try:
        version = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return "old"
    return "fixed" if version >= FIXED_KERNEL else "old"
