"""The guest side of scrub and firmware VMs, as an interface.

A real implementation talks to an agent inside the booted service VM (which has the NVIDIA driver)
over the domain's virtio channel. None ships here: booting a real guest with a real GPU is not
possible on a development machine, so LinuxHost takes a `GuestRunner` and tests inject a scripted
one. Without one, scrub and firmware calls fail with FailedPrecondition instead of pretending.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from hardware.linux.records import GpuReport


@dataclass(frozen=True)
class GuestStep:
    """One progress report from the guest: reset, clear, verify, ..."""

    phase: str
    percent: float
    detail: str = ""
    ok: bool = True


class GuestRunner(Protocol):
    """What the host asks of the agent inside a service VM that holds one GPU."""

    def scrub(self, vm_name: str, address: str) -> Iterator[GuestStep]:
        """Reset the GPU, clear and verify its memory; yield progress as it goes."""
        ...

    def read_gpu(self, vm_name: str, address: str) -> GpuReport:
        """UUID, serial, VRAM and VBIOS version as the driver reads them."""
        ...

    def flash_firmware(self, vm_name: str, address: str, version: str) -> None:
        """Flash the fleet's pinned VBIOS version."""
        ...
