"""PCI identity rules shared by discovery and vfio binding: addresses and device classes."""

from __future__ import annotations

import re

from hardware.platforms import NVIDIA_VENDOR_ID, SWITCHTEC_VENDOR_ID
from hardware.types import DeviceKind

# Class codes are compared on their upper 16 bits (base class + subclass); the low byte is the
# programming interface, which differs between boards and kernels.
CLASS_3D = 0x0302
CLASS_VGA = 0x0300
CLASS_BRIDGE_OTHER = 0x0680  # NVSwitch: "Bridge: other", NOT a PCI-to-PCI bridge
CLASS_PCI_BRIDGE = 0x0604  # the only bridges VFIO tolerates inside a group
CLASS_MEMORY_OTHER = 0x0580  # Switchtec management endpoint

_FULL_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_SHORT_BDF = re.compile(r"^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def normalize_address(address: str) -> str:
    """Full lower-case BDF with domain ("18:00.0" → "0000:18:00.0"); ValueError when malformed."""
    text = address.strip().lower()
    if _SHORT_BDF.match(text):
        text = "0000:" + text
    if not _FULL_BDF.match(text):
        raise ValueError(f"not a PCI address: {address!r}")
    return text


def class_prefix(class_code: int) -> int:
    """Base class and subclass of a 24-bit class code (0x030200 → 0x0302)."""
    return (class_code >> 8) & 0xFFFF


def classify(vendor_id: int, device_id: int, class_code: int) -> DeviceKind | None:
    """What a PCI function is to us, by vendor and class only (never by bound driver).

    NVIDIA 3D controllers and NVIDIA VGA controllers are GPUs; the BMC's VGA (1a03:2000) fails the
    vendor test. NVIDIA "Bridge: other" functions are NVSwitches and must not be mistaken for (and
    skipped as) PCI-to-PCI bridges. Newer systems that expose NVSwitches as ConnectX-7 cards are
    not handled here.

    The Switchtec management endpoint is told apart by class, not device id: a Switchtec switch's
    bridge ports carry the same device id (11f8:4128) with class 0x0604, and the kernel's own
    switchtec driver matches on class 0x0580 too.
    """
    prefix = class_prefix(class_code)
    if vendor_id == NVIDIA_VENDOR_ID:
        if prefix in (CLASS_3D, CLASS_VGA):
            return DeviceKind.GPU
        if prefix == CLASS_BRIDGE_OTHER:
            return DeviceKind.NVSWITCH
        return None
    if vendor_id == SWITCHTEC_VENDOR_ID and prefix == CLASS_MEMORY_OTHER:
        return DeviceKind.SWITCH_MGMT
    return None


def is_pci_bridge(class_code: int) -> bool:
    """A PCI-to-PCI bridge, which VFIO allows to share a group with an assigned device."""
    return class_prefix(class_code) == CLASS_PCI_BRIDGE


def nodedev_name(address: str) -> str:
    """libvirt's node device name for a PCI function ("0000:18:00.0" → "pci_0000_18_00_0")."""
    return "pci_" + normalize_address(address).replace(":", "_").replace(".", "_")
