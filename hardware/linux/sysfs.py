"""Discover GPUs, NVSwitches and the Switchtec endpoint by walking a sysfs tree.

Reads `<root>/bus/pci/devices/<bdf>/` the way the kernel lays it out: hex `vendor`, `device`,
`class`, `subsystem_vendor`, `subsystem_device` files, a decimal `numa_node`, an `iommu_group`
symlink into `kernel/iommu_groups/<n>` and a `driver` symlink into `bus/pci/drivers/<name>`.
The root is configurable so tests (and the simulator) can point it at a temporary folder.

Devices are recognised by vendor and class, never by the bound driver, so a GPU still bound to
`nvidia` (or to nothing) is found. One malformed entry is logged and skipped: discovery of the
rest of the node must not depend on one bad file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hardware.isolation import GroupMember, group_blockers, isolation_reason
from hardware.linux.pci import classify, normalize_address
from hardware.types import DeviceKind, PciDevice

log = logging.getLogger(__name__)

DEFAULT_SYSFS_ROOT = Path("/sys")
NO_NUMA_NODE = -1  # what the kernel writes when the platform reports no affinity


class MalformedEntry(ValueError):
    """One sysfs device entry cannot be read (missing or garbage file, dangling link)."""


@dataclass(frozen=True)
class PciFunction:
    """The raw sysfs view of one PCI function."""

    address: str
    vendor_id: int
    device_id: int
    class_code: int
    subsystem_vendor_id: int | None
    subsystem_device_id: int | None
    numa_node: int
    iommu_group: int | None
    driver: str | None

    @property
    def kind(self) -> DeviceKind | None:
        return classify(self.vendor_id, self.device_id, self.class_code)

    def to_device(self, module_id: int | None = None) -> PciDevice:
        kind = self.kind
        if kind is None:
            raise ValueError(f"{self.address} is not a device we manage")
        return PciDevice(
            address=self.address,
            kind=kind,
            vendor_id=self.vendor_id,
            device_id=self.device_id,
            class_code=self.class_code,
            iommu_group=self.iommu_group,
            driver=self.driver,
            numa_node=self.numa_node,
            module_id=module_id,
            subsystem_vendor_id=self.subsystem_vendor_id,
            subsystem_device_id=self.subsystem_device_id,
        )


@dataclass(frozen=True)
class DiscoveredGpu:
    """A GPU function, whether it is alone in its IOMMU group, and why VFIO could not hand it to a
    VM on its own ("" when it could; hardware/isolation.py)."""

    function: PciFunction
    alone_in_iommu_group: bool
    isolation_reason: str = ""


@dataclass(frozen=True)
class Discovery:
    """Everything NVIDIA-related one walk of sysfs found."""

    gpus: tuple[DiscoveredGpu, ...]
    nvswitches: tuple[PciFunction, ...]
    switch_mgmt: tuple[PciFunction, ...]
    groups: dict[int, tuple[str, ...]]  # IOMMU group → member addresses, for groups we touch
    skipped: tuple[str, ...]  # entries skipped as malformed

    @property
    def switch_groups(self) -> frozenset[int]:
        """IOMMU groups holding NVSwitches: they go whole to the fabric-manager VM."""
        return frozenset(s.iommu_group for s in self.nvswitches if s.iommu_group is not None)

    def function(self, address: str) -> PciFunction | None:
        for fn in (*(g.function for g in self.gpus), *self.nvswitches, *self.switch_mgmt):
            if fn.address == address:
                return fn
        return None


class SysfsPci:
    """Read-only access to the PCI part of a sysfs tree."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_SYSFS_ROOT) -> None:
        self.root = Path(root)

    @property
    def devices_dir(self) -> Path:
        return self.root / "bus" / "pci" / "devices"

    def device_dir(self, address: str) -> Path:
        return self.devices_dir / address

    def group_dir(self, group: int) -> Path:
        return self.root / "kernel" / "iommu_groups" / str(group)

    def addresses(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.devices_dir))
        except OSError as exc:
            log.error("cannot list %s: %s", self.devices_dir, exc)
            return []
        return names

    def read_function(self, address: str) -> PciFunction:
        """Read one function; MalformedEntry when any required part is missing or garbage."""
        try:
            bdf = normalize_address(address)
        except ValueError as exc:
            raise MalformedEntry(str(exc)) from None
        path = self.device_dir(address)
        if not path.is_dir():  # also catches a dangling device symlink
            raise MalformedEntry(f"{path} is not a directory (dangling link?)")
        return PciFunction(
            address=bdf,
            vendor_id=_read_hex(path / "vendor"),
            device_id=_read_hex(path / "device"),
            class_code=_read_hex(path / "class"),
            subsystem_vendor_id=_read_hex_optional(path / "subsystem_vendor"),
            subsystem_device_id=_read_hex_optional(path / "subsystem_device"),
            numa_node=_read_numa(path / "numa_node"),
            iommu_group=_read_group(path / "iommu_group"),
            driver=_read_link_name(path / "driver"),
        )

    def functions(self) -> tuple[list[PciFunction], list[str]]:
        """Every readable function, and the addresses skipped as malformed."""
        found: list[PciFunction] = []
        skipped: list[str] = []
        for address in self.addresses():
            try:
                found.append(self.read_function(address))
            except MalformedEntry as exc:
                log.warning("skipping malformed sysfs PCI entry %s: %s", address, exc)
                skipped.append(address)
        return found, skipped

    def group_members(self, group: int) -> tuple[str, ...]:
        """Member addresses as the kernel lists them in `kernel/iommu_groups/<n>/devices`."""
        try:
            names = os.listdir(self.group_dir(group) / "devices")
        except OSError:
            return ()
        members = []
        for name in names:
            try:
                members.append(normalize_address(name))
            except ValueError:
                log.warning("ignoring odd name %r in IOMMU group %d", name, group)
        return tuple(sorted(members))

    def discover(self) -> Discovery:
        """Walk the tree once and sort NVIDIA-related functions into GPUs, switches, mgmt."""
        functions, skipped = self.functions()
        by_address = {fn.address: fn for fn in functions}
        groups = _group_index(functions)
        for group in list(groups):
            groups[group] = tuple(sorted(set(groups[group]) | set(self.group_members(group))))
        gpus: list[DiscoveredGpu] = []
        nvswitches: list[PciFunction] = []
        mgmt: list[PciFunction] = []
        for fn in functions:
            kind = fn.kind
            if kind is DeviceKind.GPU:
                members = self._members(fn, groups, by_address)
                alone = fn.iommu_group is not None and not group_blockers(fn.address, members)
                reason = isolation_reason(
                    address=fn.address, iommu_group=fn.iommu_group, driver=fn.driver, members=members
                )
                if reason:
                    log.warning("GPU %s is not isolated (%s); it will not be offered", fn.address, reason)
                gpus.append(DiscoveredGpu(function=fn, alone_in_iommu_group=alone, isolation_reason=reason))
            elif kind is DeviceKind.NVSWITCH:
                nvswitches.append(fn)
            elif kind is DeviceKind.SWITCH_MGMT:
                mgmt.append(fn)
        wanted = {fn.iommu_group for fn in (*nvswitches, *mgmt, *(g.function for g in gpus))}
        return Discovery(
            gpus=tuple(gpus),
            nvswitches=tuple(nvswitches),
            switch_mgmt=tuple(mgmt),
            groups={g: members for g, members in groups.items() if g in wanted},
            skipped=tuple(skipped),
        )

    def _members(self, fn: PciFunction, groups: dict[int, tuple[str, ...]],
                 by_address: dict[str, PciFunction]) -> list[GroupMember]:
        """The other functions in `fn`'s IOMMU group; one we could not read has no ids (a blocker)."""
        if fn.iommu_group is None:
            return []
        members = []
        for address in groups.get(fn.iommu_group, ()):
            other = by_address.get(address)
            if address == fn.address:
                continue
            if other is None:
                members.append(GroupMember(address))
            else:
                members.append(GroupMember(address, other.vendor_id, other.device_id, other.class_code))
        return members


def _group_index(functions: Iterable[PciFunction]) -> dict[int, tuple[str, ...]]:
    index: dict[int, list[str]] = {}
    for fn in functions:
        if fn.iommu_group is not None:
            index.setdefault(fn.iommu_group, []).append(fn.address)
    return {group: tuple(sorted(members)) for group, members in index.items()}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MalformedEntry(f"cannot read {path.name}: {exc}") from None


def _read_hex_optional(path: Path) -> int | None:
    return _read_hex(path) if path.exists() else None


def _read_hex(path: Path) -> int:
    text = _read_text(path)
    try:
        return int(text, 16)
    except ValueError:
        raise MalformedEntry(f"{path.name} is not hex: {text[:40]!r}") from None


def _read_numa(path: Path) -> int:
    if not path.exists():
        return NO_NUMA_NODE
    text = _read_text(path)
    try:
        return int(text)
    except ValueError:
        raise MalformedEntry(f"numa_node is not a number: {text[:40]!r}") from None


def _read_link_name(path: Path) -> str | None:
    """Basename of a symlink's target; None when absent; MalformedEntry when dangling."""
    if not path.is_symlink():
        return None
    if not path.exists():
        raise MalformedEntry(f"{path.name} link is dangling: {os.readlink(path)}")
    return os.path.basename(os.readlink(path).rstrip("/"))


def _read_group(path: Path) -> int | None:
    name = _read_link_name(path)
    if name is None:
        return None
    try:
        return int(name)
    except ValueError:
        raise MalformedEntry(f"iommu_group link does not end in a number: {name!r}") from None
