"""Bind PCI functions to vfio-pci (and back) through sysfs.

The kernel's documented sequence: write the driver name to the function's `driver_override`,
unbind it from its current driver (`driver/unbind`), then ask the PCI core to probe it again
(`bus/pci/drivers_probe`), which now only matches the override. Unbinding clears the override and
probes again, so the host's default driver (none for GPUs on this host) can claim it.

Refusals are decided before the first write, so a refused request leaves the host unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from hardware.exceptions import FailedPrecondition, HardwareError, InvalidArgument, NotFound
from hardware.linux.pci import is_pci_bridge, normalize_address
from hardware.linux.sysfs import Discovery, MalformedEntry, PciFunction, SysfsPci
from hardware.types import DeviceKind

log = logging.getLogger(__name__)

VFIO_DRIVER = "vfio-pci"

# (path, value) → None. Injectable so tests can record writes and play the kernel's part.
SysfsWrite = Callable[[Path, str], None]


def write_sysfs(path: Path, value: str) -> None:
    """Write one value the way `echo value > path` does (sysfs wants a single write)."""
    try:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(value)
    except OSError as exc:
        raise HardwareError(f"writing {value.strip()!r} to {path} failed: {exc}") from exc


class VfioBinder:
    """Moves GPUs, and the NVSwitch IOMMU group(s) as a whole, to and from vfio-pci."""

    def __init__(self, sysfs: SysfsPci, write: SysfsWrite = write_sysfs) -> None:
        self.sysfs = sysfs
        self.write = write

    def bind(self, address: str) -> list[str]:
        """Bind a GPU (alone in its group) or a whole NVSwitch group; returns the addresses bound."""
        targets = self.plan(address)
        for fn in targets:
            if fn.driver == VFIO_DRIVER:
                continue
            device = self.sysfs.device_dir(fn.address)
            self.write(device / "driver_override", VFIO_DRIVER)
            if fn.driver is not None:
                log.info("unbinding %s from %s", fn.address, fn.driver)
                self.write(device / "driver" / "unbind", fn.address)
            self.write(self.sysfs.root / "bus" / "pci" / "drivers_probe", fn.address)
        self._expect(targets, bound=True)
        return [fn.address for fn in targets]

    def unbind(self, address: str) -> list[str]:
        """Give the function(s) back to the host: clear the override, unbind from vfio-pci, re-probe."""
        targets = self.plan(address)
        for fn in targets:
            device = self.sysfs.device_dir(fn.address)
            # An empty line clears driver_override.
            self.write(device / "driver_override", "\n")
            if fn.driver == VFIO_DRIVER:
                self.write(device / "driver" / "unbind", fn.address)
                self.write(self.sysfs.root / "bus" / "pci" / "drivers_probe", fn.address)
        self._expect(targets, bound=False)
        return [fn.address for fn in targets]

    def plan(self, address: str) -> list[PciFunction]:
        """The functions a bind/unbind of `address` must move together, or the reason it may not."""
        try:
            bdf = normalize_address(address)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if not self.sysfs.device_dir(bdf).exists():
            raise NotFound(f"no PCI device {bdf}")
        try:
            fn = self.sysfs.read_function(bdf)
        except MalformedEntry as exc:
            raise FailedPrecondition(f"{bdf}: unreadable sysfs entry: {exc}") from None
        kind = fn.kind
        if kind is None:
            raise InvalidArgument(f"{bdf} ({fn.vendor_id:04x}:{fn.device_id:04x}) is not an NVIDIA GPU or NVSwitch")
        discovery = self.sysfs.discover()
        if fn.iommu_group is None:
            raise FailedPrecondition(f"{bdf} has no IOMMU group (is the IOMMU enabled?)")
        if fn.iommu_group in discovery.switch_groups:
            return self._switch_group(fn.iommu_group, discovery)
        if kind is not DeviceKind.GPU:
            raise InvalidArgument(f"{bdf} is a {kind} outside the NVSwitch IOMMU group(s)")
        gpu = next(g for g in discovery.gpus if g.function.address == bdf)
        if not gpu.alone_in_iommu_group:
            members = ", ".join(discovery.groups.get(fn.iommu_group, ()))
            raise FailedPrecondition(f"GPU {bdf} shares IOMMU group {fn.iommu_group} with other devices ({members})")
        return [gpu.function]

    def _switch_group(self, group: int, discovery: Discovery) -> list[PciFunction]:
        # The whole group goes to the fabric-manager VM; VFIO needs every endpoint in it bound.
        targets: list[PciFunction] = []
        for member in discovery.groups.get(group, ()):
            fn = discovery.function(member)
            if fn is not None:
                targets.append(fn)
                continue
            try:
                other = self.sysfs.read_function(member)
            except MalformedEntry as exc:
                raise FailedPrecondition(f"IOMMU group {group}: unreadable member {member}: {exc}") from None
            if not is_pci_bridge(other.class_code):
                raise FailedPrecondition(
                    f"IOMMU group {group} holds {member} ({other.vendor_id:04x}:{other.device_id:04x}), "
                    "which is neither an NVSwitch nor the switch management endpoint"
                )
        return targets

    def _expect(self, targets: list[PciFunction], *, bound: bool) -> None:
        for fn in targets:
            now = self.sysfs.read_function(fn.address).driver
            if (now == VFIO_DRIVER) != bound:
                state = "bound to" if bound else "released from"
                raise FailedPrecondition(
                    f"{fn.address} was not {state} {VFIO_DRIVER} (driver now: {now or 'none'}); "
                    "is the vfio-pci module loaded?"
                )
