"""Whether VFIO can hand a GPU, and only it, to a VM; and if not, why (one rule for every host).

A GPU goes to a tenant as its whole IOMMU group (`/dev/vfio/<group>`), so it is isolated only when:

- it has an IOMMU group at all (none means the IOMMU is off: VFIO cannot assign anything);
- no other endpoint shares that group: PCI-to-PCI bridges are tolerated (VFIO does), anything
  else (a NIC behind a switch without ACS, say) would go to the tenant with the GPU;
- it is bound to vfio-pci: a GPU the host's `nvidia` driver (or no driver) holds cannot be
  opened through VFIO, and the host would be using it.

`LinuxHost` (from sysfs) and `SimHost` (from its PCI tree) both report `isolation_reason`, so the
simulator's sysfs folder read by LinuxHost gives the same answer (tests/hardware/test_sysfs_equivalence.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hardware.linux.pci import is_pci_bridge

VFIO_DRIVER = "vfio-pci"
NOT_ALONE_REASON = "not alone in its IOMMU group"


@dataclass(frozen=True)
class GroupMember:
    """Another PCI function in a GPU's IOMMU group; `vendor_id` None when it could not be read."""

    address: str
    vendor_id: int | None = None
    device_id: int | None = None
    class_code: int | None = None

    def __str__(self) -> str:
        if self.vendor_id is None or self.device_id is None:
            return f"{self.address} (unreadable)"
        return f"{self.address} ({self.vendor_id:04x}:{self.device_id:04x})"


def group_blockers(address: str, members: Iterable[GroupMember]) -> list[GroupMember]:
    """The members of a GPU's IOMMU group that would go to the tenant with it (bridges excepted)."""
    return sorted(
        (m for m in members if m.address != address and (m.class_code is None or not is_pci_bridge(m.class_code))),
        key=lambda m: m.address,
    )


def isolation_reason(*, address: str, iommu_group: int | None, driver: str | None,
                     members: Iterable[GroupMember]) -> str:
    """"" when VFIO can hand the GPU at `address`, and only it, to a VM; else why not."""
    if iommu_group is None:
        return "no IOMMU group (is the IOMMU enabled?): VFIO cannot assign it"
    blockers = group_blockers(address, members)
    if blockers:
        others = ", ".join(str(m) for m in blockers)
        return f"{NOT_ALONE_REASON} {iommu_group}: shares it with {others}, which would go to the tenant too"
    if driver is None:
        return f"bound to no driver, not {VFIO_DRIVER}: VFIO cannot assign it until it is bound"
    if driver != VFIO_DRIVER:
        return f"bound to the host's {driver} driver, not {VFIO_DRIVER}: the host holds it"
    return ""
