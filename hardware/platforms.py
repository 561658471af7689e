"""GPU server platforms as data.

A platform is a kind of GPU baseboard (HGX H100 8-GPU, DGX H100, ...): its GPU model and PCI ids,
memory, BAR sizes, NVSwitches, the fabric manager's partition table and the firmware the fleet pins.
A board variant is one vendor's layout of that platform on the PCI bus: BDFs, IOMMU groups and the
module-id → BDF map, which cannot be read from PCI (HARDWARE.md) and so is recorded here per board.

Pure data, no Django: the node agent, the simulator and the console all read it. Nothing else in
the code base may assume 8 GPUs, 4 NVSwitches or H100.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property

NVIDIA_VENDOR_ID = 0x10DE
SWITCHTEC_VENDOR_ID = 0x11F8
SWITCHTEC_DEVICE_ID = 0x4128
CLASS_3D_CONTROLLER = 0x030200
CLASS_VGA = 0x030000
CLASS_BRIDGE_OTHER = 0x068000
CLASS_MEMORY_CONTROLLER = 0x058000

SWITCH_GROUPS_PER_SWITCH = "per-switch"
SWITCH_GROUPS_SHARED = "shared"


class PlatformError(ValueError):
    """A platform or board variant definition breaks a rule (raised at import)."""


@dataclass(frozen=True)
class PartitionSpec:
    """One row of the fabric manager's partition table: id, GPU physical (module) ids, NVLinks."""

    id: int
    gpus: tuple[int, ...]
    nvlinks: int

    @property
    def size(self) -> int:
        return len(self.gpus)

    def contains(self, other: PartitionSpec) -> bool:
        return set(other.gpus) <= set(self.gpus)

    def overlaps(self, other: PartitionSpec) -> bool:
        return bool(set(self.gpus) & set(other.gpus))


@dataclass(frozen=True)
class BoardVariant:
    """One vendor's PCI layout of a platform.

    `gpu_bdfs[i]` is the BDF of GPU module `module_ids[i]`; module ids do not follow PCI order.
    `gpu_iommu_groups[i]` and `gpu_numa[i]` belong to the same GPU. NVSwitches are either each in
    their own IOMMU group (DGX) or all in one group together with the Switchtec management endpoint
    (Supermicro HGX).

    Two faults of real boards are data too, so the simulator can build them and tests can show the
    console never offers such a GPU (HARDWARE.md "IOMMU groups"):
    `nic_in_gpu_group` names GPUs whose IOMMU group also holds a NIC (ACS missing on the switch
    above them: passing the group would hand the tenant the NIC); `host_driver_gpus` names GPUs
    the host's `nvidia` driver claimed at boot instead of vfio-pci.
    """

    key: str
    vendor: str
    gpu_bdfs: tuple[str, ...]
    module_ids: tuple[int, ...]
    gpu_iommu_groups: tuple[int, ...]
    gpu_numa: tuple[int, ...]
    switch_bdfs: tuple[str, ...]
    switch_grouping: str
    switch_iommu_groups: tuple[int, ...]
    switchtec_bdf: str | None = None
    switch_bridge_bdf: str | None = None
    nic_in_gpu_group: tuple[str, ...] = ()
    host_driver_gpus: tuple[str, ...] = ()

    @property
    def sound(self) -> bool:
        """Every GPU can be offered: no NIC in a GPU's group, every GPU on vfio-pci."""
        return not (self.nic_in_gpu_group or self.host_driver_gpus)

    def module_to_bdf(self) -> dict[int, str]:
        return dict(zip(self.module_ids, self.gpu_bdfs, strict=True))

    def bdf_to_module(self) -> dict[str, int]:
        return dict(zip(self.gpu_bdfs, self.module_ids, strict=True))


@dataclass(frozen=True)
class Platform:
    """A GPU baseboard model. `partitions` is the fabric manager's table for shared NVSwitch mode."""

    key: str
    name: str
    gpu_model: str
    gpu_device_id: int
    gpu_subsystem: tuple[int, int]
    gpu_class: int
    vram_mib: int
    memory_bandwidth_tbps: float
    bar0_mib: int
    bar2_gib: int
    bar4_mib: int
    nvlinks_per_gpu: int
    nvswitch_device_id: int
    nvswitch_count: int
    partitions: tuple[PartitionSpec, ...]
    pinned_firmware: str
    older_firmware: tuple[str, ...]
    max_operating_temp_c: int
    slowdown_temp_c: int
    shutdown_temp_c: int
    variants: tuple[BoardVariant, ...] = field(default=())

    @cached_property
    def gpu_count(self) -> int:
        return sum(1 for p in self.partitions if p.size == 1)

    @cached_property
    def gpu_ids(self) -> tuple[int, ...]:
        return tuple(sorted(p.gpus[0] for p in self.partitions if p.size == 1))

    @cached_property
    def partition_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({p.size for p in self.partitions}))

    @cached_property
    def partitions_by_id(self) -> dict[int, PartitionSpec]:
        return {p.id: p for p in self.partitions}

    def partition(self, partition_id: int) -> PartitionSpec:
        try:
            return self.partitions_by_id[partition_id]
        except KeyError:
            raise PlatformError(f"platform {self.key} has no partition {partition_id}") from None

    def partitions_of_size(self, size: int) -> tuple[PartitionSpec, ...]:
        return tuple(p for p in self.partitions if p.size == size)

    def single_partition(self, gpu: int) -> PartitionSpec:
        return next(p for p in self.partitions if p.gpus == (gpu,))

    def variant(self, key: str) -> BoardVariant:
        for v in self.variants:
            if v.key == key:
                return v
        known = ", ".join(v.key for v in self.variants)
        raise PlatformError(f"platform {self.key} has no variant {key!r} (known: {known})")

    def count_tilings(self) -> int:
        """How many sets of GPU-disjoint partitions cover the whole board (26 on HGX H100)."""
        return _count_tilings(frozenset(self.gpu_ids), self.partitions)


def _count_tilings(gpus: frozenset[int], partitions: tuple[PartitionSpec, ...]) -> int:
    if not gpus:
        return 1
    lowest = min(gpus)
    return sum(
        _count_tilings(gpus - set(p.gpus), partitions)
        for p in partitions
        if lowest in p.gpus and set(p.gpus) <= gpus
    )


def _table(rows: Iterable[tuple[int, tuple[int, ...]]], nvlinks_per_gpu: int) -> tuple[PartitionSpec, ...]:
    return tuple(
        PartitionSpec(id=pid, gpus=gpus, nvlinks=nvlinks_per_gpu * len(gpus) if len(gpus) > 1 else 0)
        for pid, gpus in rows
    )


# The shared-NVSwitch table of HGX/DGX H100 and H200 (seed 001, `fmctl list`). Pairs are {1,3},{2,4},...
HOPPER_8GPU_TABLE = _table(
    [
        (0, (1, 2, 3, 4, 5, 6, 7, 8)),
        (1, (1, 2, 3, 4)),
        (2, (5, 6, 7, 8)),
        (3, (1, 3)),
        (4, (2, 4)),
        (5, (5, 7)),
        (6, (6, 8)),
        *[(6 + gpu, (gpu,)) for gpu in range(1, 9)],
    ],
    nvlinks_per_gpu=18,
)

# HGX A100 8-GPU: the rows of the A100 table (ids 0-34, written for 16-GPU systems) that fit an
# 8-GPU baseboard. Ids keep their A100 numbering, so they differ from Hopper's.
AMPERE_8GPU_TABLE = _table(
    [
        (1, (1, 2, 3, 4, 5, 6, 7, 8)),
        (3, (1, 2, 3, 4)),
        (4, (5, 6, 7, 8)),
        (7, (1, 3)),
        (8, (2, 4)),
        (9, (5, 7)),
        (10, (6, 8)),
        *[(14 + gpu, (gpu,)) for gpu in range(1, 9)],
    ],
    nvlinks_per_gpu=12,
)

_HGX_GPU_BDFS = ("18:00.0", "2a:00.0", "3a:00.0", "5d:00.0", "9a:00.0", "ab:00.0", "ba:00.0", "db:00.0")
_NUMA_4_4 = (0, 0, 0, 0, 1, 1, 1, 1)

SUPERMICRO_HGX = BoardVariant(
    key="supermicro",
    vendor="Supermicro",
    gpu_bdfs=_HGX_GPU_BDFS,
    # On this board 18:00.0 is module 2 (HARDWARE.md): module ids do not follow PCI order.
    module_ids=(2, 4, 1, 3, 6, 8, 5, 7),
    gpu_iommu_groups=(38, 53, 66, 83, 112, 127, 140, 157),
    gpu_numa=_NUMA_4_4,
    switch_bdfs=("05:00.0", "06:00.0", "07:00.0", "08:00.0"),
    switch_grouping=SWITCH_GROUPS_SHARED,
    switch_iommu_groups=(24,),
    switchtec_bdf="03:00.1",
    switch_bridge_bdf="04:00.0",
)

# The same board with one of its faults each (platforms are data; the simulator builds them).
# GPU 3a:00.0 (module 1) shares its IOMMU group with a NIC: it must never be offered.
SUPERMICRO_HGX_NIC_SHARED = replace(SUPERMICRO_HGX, key="supermicro-nic-shared", nic_in_gpu_group=("3a:00.0",))
# GPU 9a:00.0 (module 6) came up bound to the host's nvidia driver instead of vfio-pci.
SUPERMICRO_HGX_HOST_DRIVER = replace(SUPERMICRO_HGX, key="supermicro-host-driver", host_driver_gpus=("9a:00.0",))

OEM_HGX = BoardVariant(
    key="oem",
    vendor="Generic OEM",
    gpu_bdfs=_HGX_GPU_BDFS,
    module_ids=(3, 1, 4, 2, 7, 5, 8, 6),
    gpu_iommu_groups=(40, 55, 68, 85, 114, 129, 142, 159),
    gpu_numa=_NUMA_4_4,
    switch_bdfs=("07:00.0", "08:00.0", "09:00.0", "0a:00.0"),
    switch_grouping=SWITCH_GROUPS_PER_SWITCH,
    switch_iommu_groups=(26, 27, 28, 29),
)

DGX_H100_BOARD = BoardVariant(
    key="dgx",
    vendor="NVIDIA",
    gpu_bdfs=("1b:00.0", "43:00.0", "52:00.0", "61:00.0", "9d:00.0", "c3:00.0", "d1:00.0", "df:00.0"),
    module_ids=(5, 7, 6, 8, 3, 1, 4, 2),
    gpu_iommu_groups=(45, 71, 80, 89, 121, 147, 156, 165),
    gpu_numa=_NUMA_4_4,
    switch_bdfs=("05:00.0", "06:00.0", "07:00.0", "08:00.0"),
    switch_grouping=SWITCH_GROUPS_PER_SWITCH,
    switch_iommu_groups=(18, 19, 20, 21),
)

A100_BOARD = BoardVariant(
    key="oem",
    vendor="Generic OEM",
    gpu_bdfs=("07:00.0", "0f:00.0", "47:00.0", "4e:00.0", "87:00.0", "90:00.0", "b7:00.0", "bd:00.0"),
    module_ids=(3, 1, 4, 2, 7, 5, 8, 6),
    gpu_iommu_groups=(30, 34, 58, 62, 96, 100, 124, 128),
    gpu_numa=(3, 3, 1, 1, 7, 7, 5, 5),
    switch_bdfs=("c4:00.0", "c5:00.0", "c6:00.0", "c7:00.0", "c8:00.0", "c9:00.0"),
    switch_grouping=SWITCH_GROUPS_PER_SWITCH,
    switch_iommu_groups=(132, 133, 134, 135, 136, 137),
)

HGX_H100 = Platform(
    key="hgx-h100-8",
    name="HGX H100 8-GPU",
    gpu_model="NVIDIA H100 80GB HBM3",
    gpu_device_id=0x2330,
    gpu_subsystem=(0x10DE, 0x16C1),
    gpu_class=CLASS_3D_CONTROLLER,
    vram_mib=81_079,
    memory_bandwidth_tbps=3.35,
    bar0_mib=16,
    bar2_gib=128,
    bar4_mib=32,
    nvlinks_per_gpu=18,
    nvswitch_device_id=0x22A3,
    nvswitch_count=4,
    partitions=HOPPER_8GPU_TABLE,
    pinned_firmware="96.00.99.00.01",
    older_firmware=("96.00.74.00.01",),
    max_operating_temp_c=87,
    slowdown_temp_c=89,
    shutdown_temp_c=92,
    variants=(SUPERMICRO_HGX, OEM_HGX, SUPERMICRO_HGX_NIC_SHARED, SUPERMICRO_HGX_HOST_DRIVER),
)

DGX_H100 = Platform(
    key="dgx-h100",
    name="DGX H100",
    gpu_model="NVIDIA H100 80GB HBM3",
    gpu_device_id=0x2330,
    gpu_subsystem=(0x10DE, 0x16C1),
    gpu_class=CLASS_3D_CONTROLLER,
    vram_mib=81_079,
    memory_bandwidth_tbps=3.35,
    bar0_mib=16,
    bar2_gib=128,
    bar4_mib=32,
    nvlinks_per_gpu=18,
    nvswitch_device_id=0x22A3,
    nvswitch_count=4,
    partitions=HOPPER_8GPU_TABLE,
    pinned_firmware="96.00.99.00.01",
    older_firmware=("96.00.74.00.01",),
    max_operating_temp_c=87,
    slowdown_temp_c=89,
    shutdown_temp_c=92,
    variants=(DGX_H100_BOARD,),
)

HGX_H200 = Platform(
    key="hgx-h200-8",
    name="HGX H200 8-GPU",
    gpu_model="NVIDIA H200 141GB HBM3e",
    gpu_device_id=0x2335,
    gpu_subsystem=(0x10DE, 0x18BE),
    gpu_class=CLASS_3D_CONTROLLER,
    vram_mib=143_771,
    memory_bandwidth_tbps=4.8,
    bar0_mib=16,
    bar2_gib=256,  # estimate (HARDWARE.md)
    bar4_mib=32,
    nvlinks_per_gpu=18,
    nvswitch_device_id=0x22A3,
    nvswitch_count=4,
    partitions=HOPPER_8GPU_TABLE,
    pinned_firmware="96.00.DA.00.16",
    older_firmware=("96.00.C9.00.02",),
    max_operating_temp_c=87,
    slowdown_temp_c=89,
    shutdown_temp_c=92,
    variants=(SUPERMICRO_HGX,),
)

HGX_A100 = Platform(
    key="hgx-a100-8",
    name="HGX A100 8-GPU",
    gpu_model="NVIDIA A100-SXM4-80GB",
    gpu_device_id=0x20B2,
    gpu_subsystem=(0x10DE, 0x1463),
    gpu_class=CLASS_3D_CONTROLLER,
    vram_mib=81_920,
    memory_bandwidth_tbps=2.04,
    bar0_mib=16,
    bar2_gib=128,
    bar4_mib=32,
    nvlinks_per_gpu=12,
    nvswitch_device_id=0x1AF1,
    nvswitch_count=6,
    partitions=AMPERE_8GPU_TABLE,
    pinned_firmware="92.00.45.00.06",
    older_firmware=("92.00.36.00.02",),
    max_operating_temp_c=85,
    slowdown_temp_c=88,
    shutdown_temp_c=92,
    variants=(A100_BOARD,),
)

PLATFORMS: dict[str, Platform] = {p.key: p for p in (HGX_H100, DGX_H100, HGX_H200, HGX_A100)}


def get_platform(key: str) -> Platform:
    try:
        return PLATFORMS[key]
    except KeyError:
        known = ", ".join(sorted(PLATFORMS))
        raise PlatformError(f"unknown platform {key!r} (known: {known})") from None


def all_partition_sizes() -> tuple[int, ...]:
    """Every GPU count some platform can grant: the only legal request sizes."""
    return tuple(sorted({size for p in PLATFORMS.values() for size in p.partition_sizes}))


def validate_platform(platform: Platform) -> None:
    """Raise PlatformError unless the table is a tree covering every GPU and each variant fits it."""
    ids = [p.id for p in platform.partitions]
    if len(ids) != len(set(ids)):
        raise PlatformError(f"{platform.key}: duplicate partition ids")
    singles = sorted(p.gpus[0] for p in platform.partitions if p.size == 1)
    if len(singles) != len(set(singles)) or singles != list(range(1, len(singles) + 1)):
        raise PlatformError(f"{platform.key}: every GPU 1..N needs exactly one 1-GPU partition")
    covered = set(singles)
    for p in platform.partitions:
        if not set(p.gpus) <= covered:
            raise PlatformError(f"{platform.key}: partition {p.id} names a GPU without a 1-GPU partition")
        if len(set(p.gpus)) != p.size:
            raise PlatformError(f"{platform.key}: partition {p.id} repeats a GPU")
    for a in platform.partitions:
        for b in platform.partitions:
            if a.id < b.id and a.overlaps(b) and not (a.contains(b) or b.contains(a)):
                raise PlatformError(f"{platform.key}: partitions {a.id} and {b.id} overlap but do not nest")
    for v in platform.variants:
        n = platform.gpu_count
        if not (len(v.gpu_bdfs) == len(v.module_ids) == len(v.gpu_iommu_groups) == len(v.gpu_numa) == n):
            raise PlatformError(f"{platform.key}/{v.key}: variant must describe {n} GPUs")
        if sorted(v.module_ids) != list(platform.gpu_ids):
            raise PlatformError(f"{platform.key}/{v.key}: module ids must be a permutation of 1..{n}")
        if len(v.switch_bdfs) != platform.nvswitch_count:
            raise PlatformError(f"{platform.key}/{v.key}: expected {platform.nvswitch_count} NVSwitch BDFs")
        expected_groups = 1 if v.switch_grouping == SWITCH_GROUPS_SHARED else platform.nvswitch_count
        if len(v.switch_iommu_groups) != expected_groups:
            raise PlatformError(f"{platform.key}/{v.key}: switch IOMMU groups do not match its grouping")
        if len(set(v.gpu_iommu_groups) | set(v.switch_iommu_groups)) != n + expected_groups:
            raise PlatformError(f"{platform.key}/{v.key}: every GPU needs an IOMMU group of its own")
        if not set(v.nic_in_gpu_group) | set(v.host_driver_gpus) <= set(v.gpu_bdfs):
            raise PlatformError(f"{platform.key}/{v.key}: a board fault names a BDF that is not one of its GPUs")


for _platform in PLATFORMS.values():
    validate_platform(_platform)
