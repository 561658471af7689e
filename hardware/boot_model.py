"""How long a Kata VM with GPUs takes to boot, phase by phase (a pure model of HARDWARE.md's
"VM boot, mechanism by mechanism").

The console predicts a lease's boot from the features a server's agent reported (fleet records
them); the simulator plays its VMs' boots with the same function. Everything that differs between
hosts and guests is an argument; every per-step cost is a field of `BootCoefficients` with its
source next to it ("est." marks a figure that is not a measurement).

Phases, always all eight and in this order (stable identifiers: the lease timeline, the BootPhase
rows and the simulator's boot stream use them; a phase that costs nothing under some features, like
`plug` with cold-plug, is still reported, with 0 s):

- `ram_pinning`: the hypervisor starts and VFIO pins (and zeroes) the guest's RAM.
- `bar_mapping`: the host maps each GPU's large BAR for the VM, GPU after GPU.
- `plug`: hot-plug only: each GPU is added after the guest is up, one by one (ACPI/pciehp), and on
  a 5.15-era host every plug makes the BARs already mapped be faulted again page by page.
- `guest_pci_enumeration`: firmware and guest kernel start, the guest walks the PCI tree and sizes
  the BARs (each command-register toggle makes the host unmap and remap the BAR).
- `driver_init`: the guest NVIDIA driver brings the GPUs up one after another.
- `init_cdi`: the init system (systemd or NVRC) starts and `nvidia-ctk` writes the CDI spec the
  kata-agent waits for (it retries up to 40 times at ~2 s).
- `kata_agent`, `container_start`: seconds.

With hot-plug the real boot interleaves mapping, plugging and sizing GPU by GPU; the model reports
each mechanism's total in the fixed order, so the timeline compares like with like.

Mechanisms by host kernel (release strings such as "5.15.0-105-generic", "6.8.0-45", "6.12.3"; an
unparsable or empty one is taken as the oldest generation, so a prediction is never optimistic for
lack of data):

| host kernel | BAR map, per 128 GiB BAR | one guest BAR-sizing toggle | hot-plug re-fault storm |
| --- | --- | --- | --- |
| < 6.8 (5.15-era legacy VFIO) | 33.5 M page faults | as 6.8 | yes |
| 6.8 – 6.11, or QEMU < 9.2 | 3.45 s (4 KiB steps) | 3.45 s | no |
| 6.12 – 6.14 with QEMU ≥ 9.2 | 2.7 s (huge-pfnmap) | 2.7 s | no |
| ≥ 6.15 with QEMU ≥ 9.2 (est.) | < 4 ms | < 4 ms | no |

Every cost is non-increasing in the host kernel version and non-decreasing in GPUs and guest RAM
(property tests check it). Calibration: the 5.15 page-fault cost and the re-fault storm are fitted
to the seeds' two points (old host, hot-plug, old guest, systemd: 1 GPU ≈ 2 min, 8 GPUs ≈ 30 min);
everything else is a measurement from HARDWARE.md or an estimate marked as such.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hardware.platforms import Platform, get_platform
from hardware.types import BootEstimate

# The phases, in timeline order (see the module docstring).
RAM_PINNING = "ram_pinning"
BAR_MAPPING = "bar_mapping"
PLUG = "plug"
GUEST_PCI_ENUMERATION = "guest_pci_enumeration"
DRIVER_INIT = "driver_init"
INIT_CDI = "init_cdi"
KATA_AGENT = "kata_agent"
CONTAINER_START = "container_start"
PHASES = (RAM_PINNING, BAR_MAPPING, PLUG, GUEST_PCI_ENUMERATION, DRIVER_INIT, INIT_CDI, KATA_AGENT,
          CONTAINER_START)

GB_PER_GIB = 1.073741824
PAGES_4K_PER_GIB = 262_144
PLUG_MODES = ("hot", "cold")
INIT_SYSTEMS = ("systemd", "nvrc")
IOMMU_BACKENDS = ("vfio-type1", "iommufd")
FIRMWARES = ("ovmf", "seabios")

Version = tuple[int, int]
OLDEST_HOST_KERNEL: Version = (5, 15)  # what an unknown host kernel is taken for (conservative)
OLDEST_GUEST_KERNEL: Version = (5, 15)
# The seeds' guest: an older distribution kernel that sizes BARs toggle by toggle.
DEFAULT_GUEST_KERNEL = "5.15.0"
# Host 6.8: legacy type1 maps the BAR in 4 KiB steps (measured, HARDWARE.md); earlier host kernels
# fault it page by page (the 5.15-era pathology).
TYPE1_4K_STEP_KERNEL: Version = (6, 8)
# VFIO device cdev + IOMMUFD on the host (Linux 6.6); an older kernel cannot use it.
IOMMUFD_KERNEL: Version = (6, 6)
# Huge-pfnmap (1 GiB) BAR mappings: host ≥ 6.12 with QEMU ≥ 9.2 (HARDWARE.md).
HUGE_PFNMAP_KERNEL: Version = (6, 12)
HUGE_PFNMAP_QEMU: Version = (9, 2)
# A 32 GB BAR DMA-maps in < 1 ms (HARDWARE.md, est. version).
PFNMAP_DMA_BATCH_KERNEL: Version = (6, 15)
# Guest kernels from here batch BAR sizing (HARDWARE.md, est. version).
BATCHED_BAR_SIZING_GUEST: Version = (6, 14)

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)")


@dataclass(frozen=True)
class BootCoefficients:
    """Per-step costs in seconds, each with its source."""

    vm_create_s: float = 2.0  # QEMU process and devices before pinning (est.)
    # Pinning with 4 KiB pages: 0.25 s per GB, page zeroing dominates (HARDWARE.md: 1 GB 0.56 s,
    # 16 GB 4.3 s, 64 GB 16 s, 120 GB 30 s).
    pin_s_per_gb_4k: float = 0.25
    # 1 GiB huge pages "avoid most of it" (HARDWARE.md); the remaining tenth is an est.
    pin_s_per_gb_huge: float = 0.025
    # IOMMUFD "made no measurable difference by itself" on 6.8 (HARDWARE.md): a few per cent of
    # pinning at most (est.), so huge pages < IOMMUFD ≤ legacy holds.
    iommufd_pin_factor: float = 0.95
    # 5.15-era legacy VFIO faults the BAR's MMIO page by page, 33.5 M pages per map or unmap of a
    # 128 GiB BAR (HARDWARE.md); the cost per page is fitted to the seeds' two points (est.).
    page_fault_s_5_15: float = 0.7e-6
    # Host 6.8, legacy type1: 3.2–3.75 s per H100 BAR, GPU after GPU (HARDWARE.md).
    map_s_per_128gib_4k_steps: float = 3.45
    # Host 6.12 with huge-pfnmap: one toggle's unmap and remap took 2–3.4 s on a DGX H100 (HARDWARE.md).
    map_s_per_128gib_huge_pfnmap: float = 2.7
    # Host ≥ 6.15: a 32 GB BAR DMA-maps in < 1 ms, so < 4 ms per 128 GiB (HARDWARE.md, est. version).
    map_s_per_128gib_batched: float = 0.004
    # Hot-plug handshake per GPU (ACPI/pciehp). A GPU hot-re-plugged into a booted VM takes < 5 s
    # including its ~3.45 s BAR map (HARDWARE.md), leaving ~1.5 s (est.).
    hotplug_s_per_gpu: float = 1.5
    # On a 5.15-era host each hot-plug makes the BARs already mapped be unmapped and faulted again
    # page by page (HARDWARE.md: "worst when GPUs are hot-plugged one after another"); one re-fault
    # (unmap + map) per GPU already present per plug is fitted to the seeds (est.).
    refaults_per_present_gpu_per_plug: int = 1
    # OVMF enumerates PCI and places the 64-bit BARs itself before the kernel starts (est.);
    # SeaBIOS starts faster (est.).
    firmware_ovmf_s: float = 5.0
    firmware_seabios_s: float = 1.5
    guest_kernel_start_s: float = 3.0  # guest kernel to its PCI walk (est.)
    # An NVIDIA PCI quirk costs about 0.8 s per H100 in the guest's enumeration (HARDWARE.md).
    pci_quirk_s_per_gpu: float = 0.8
    # A guest before 6.14 toggles the command register 20–40 times per 8-GPU boot (HARDWARE.md):
    # 3 per GPU; a newer guest batches the sizing, one toggle per GPU (est.).
    toggles_per_gpu_old_guest: int = 3
    toggles_per_gpu_new_guest: int = 1
    # The guest's NVIDIA driver: 3.2–3.7 s per GPU, then ~2.1 s each of interrupt handling, serially
    # (HARDWARE.md).
    driver_init_s_per_gpu: float = 3.45 + 2.1
    # systemd up to `nvidia-ctk` plus the CDI spec: "about half of a ~2-minute boot" (HARDWARE.md),
    # so ~60 s for one GPU; NVRC starts without systemd's units (est.).
    init_systemd_s: float = 53.0
    init_nvrc_s: float = 4.0
    cdi_generate_s: float = 6.0  # nvidia-ctk cdi generate (est.)
    cdi_s_per_gpu: float = 1.0  # one NVML query per device (est.)
    kata_agent_s: float = 1.5  # "seconds" (HARDWARE.md; est.)
    container_start_s: float = 2.0  # "seconds" (HARDWARE.md; est.)


DEFAULT_COEFFICIENTS = BootCoefficients()


def parse_kernel_version(release: str) -> Version | None:
    """(major, minor) of a kernel release ("5.15.0-105-generic", "6.8.0-45", "6.12.3"); None when
    it does not start with one."""
    match = _VERSION.match(release or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, not {value!r}")


def _host_map_s_per_128gib(host: Version, qemu: Version, c: BootCoefficients) -> float:
    """One map (or one unmap + remap by a guest toggle) of a 128 GiB BAR on this host."""
    if host < TYPE1_4K_STEP_KERNEL:
        return c.page_fault_s_5_15 * 128 * PAGES_4K_PER_GIB
    if host >= HUGE_PFNMAP_KERNEL and qemu >= HUGE_PFNMAP_QEMU:
        return c.map_s_per_128gib_batched if host >= PFNMAP_DMA_BATCH_KERNEL else c.map_s_per_128gib_huge_pfnmap
    return c.map_s_per_128gib_4k_steps


def estimate_boot(
    gpus: int,
    *,
    platform: Platform | str,
    host_kernel: str,
    iommu_backend: str = "vfio-type1",
    plug_mode: str = "hot",
    hugepages: bool = False,
    guest_ram_gib: float,
    qemu_version: str = "",
    guest_kernel: str = DEFAULT_GUEST_KERNEL,
    firmware: str = "ovmf",
    init_system: str = "systemd",
    coefficients: BootCoefficients = DEFAULT_COEFFICIENTS,
) -> BootEstimate:
    """Predict a VM's boot: the eight `PHASES` (name, seconds) in order; the total is their sum.

    `host_kernel` and `guest_kernel` are release strings; an unknown QEMU ("") is taken as older
    than 9.2. IOMMUFD on a host kernel before 6.6 is not available and counts as legacy type1.
    """
    if gpus < 0 or guest_ram_gib < 0:
        raise ValueError("gpus and guest_ram_gib must be >= 0")
    _check("plug_mode", plug_mode, PLUG_MODES)
    _check("init_system", init_system, INIT_SYSTEMS)
    _check("iommu_backend", iommu_backend, IOMMU_BACKENDS)
    _check("firmware", firmware, FIRMWARES)
    c = coefficients
    plat = get_platform(platform) if isinstance(platform, str) else platform
    host = parse_kernel_version(host_kernel) or OLDEST_HOST_KERNEL
    guest = parse_kernel_version(guest_kernel) or OLDEST_GUEST_KERNEL
    qemu = parse_kernel_version(qemu_version) or (0, 0)
    bar_scale = plat.bar2_gib / 128  # costs per 4 KiB page scale with the BAR's size
    map_s = _host_map_s_per_128gib(host, qemu, c) * bar_scale

    pin_rate = c.pin_s_per_gb_huge if hugepages else c.pin_s_per_gb_4k
    if iommu_backend == "iommufd" and host >= IOMMUFD_KERNEL:
        pin_rate *= c.iommufd_pin_factor
    ram_pinning = c.vm_create_s + guest_ram_gib * GB_PER_GIB * pin_rate

    plug = 0.0
    if plug_mode == "hot":
        plug = gpus * c.hotplug_s_per_gpu
        if host < TYPE1_4K_STEP_KERNEL:
            # The k-th plug re-faults the k-1 BARs already mapped: an unmap and a map each.
            present_pairs = gpus * (gpus - 1) // 2
            plug += present_pairs * c.refaults_per_present_gpu_per_plug * 2 * map_s

    toggles = c.toggles_per_gpu_new_guest if guest >= BATCHED_BAR_SIZING_GUEST else c.toggles_per_gpu_old_guest
    firmware_s = c.firmware_ovmf_s if firmware == "ovmf" else c.firmware_seabios_s
    # A toggle's remap costs what the 6.8 path costs even on a 5.15 host (est.): the page-by-page
    # pathology is the hot-plug storm above, which the seeds' 1-GPU boot does not show.
    toggle_s = min(map_s, c.map_s_per_128gib_4k_steps * bar_scale)
    enumeration = c.guest_kernel_start_s + firmware_s + gpus * (c.pci_quirk_s_per_gpu + toggles * toggle_s)

    init_s = c.init_systemd_s if init_system == "systemd" else c.init_nvrc_s
    phases = (
        (RAM_PINNING, ram_pinning),
        (BAR_MAPPING, gpus * map_s),
        (PLUG, plug),
        (GUEST_PCI_ENUMERATION, enumeration),
        (DRIVER_INIT, gpus * c.driver_init_s_per_gpu),
        (INIT_CDI, init_s + c.cdi_generate_s + gpus * c.cdi_s_per_gpu),
        (KATA_AGENT, c.kata_agent_s),
        (CONTAINER_START, c.container_start_s),
    )
    return BootEstimate(phases=tuple((name, round(seconds, 6)) for name, seconds in phases))


def startup_timeout_s(predicted_s: float, *, factor: float, extra_s: float) -> int:
    """The pod's start-up timeout from a predicted boot: `factor` × prediction + `extra_s`, whole
    seconds (a fixed timeout killed the seed's 8-GPU VM in a loop)."""
    if factor < 1 or extra_s < 0:
        raise ValueError("factor must be >= 1 and extra_s >= 0")
    return math.ceil(predicted_s * factor + extra_s)


def kernel_generation(release: str) -> str:
    """The coarse class the fleet shows next to the version: "fixed" from huge-pfnmap VFIO (host
    6.12), else "old"; unparsable → "old". The model itself reads the version."""
    version = parse_kernel_version(release)
    return "fixed" if version is not None and version >= HUGE_PFNMAP_KERNEL else "old"
