"""The host backend interface the node agent serves: `LinuxHost` on a real server, `SimHost` in the simulator.

The agent's gRPC servicer is a thin translation between the wire and this interface, so the
simulated fleet exercises exactly the agent and client code a real fleet does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from hardware.types import (
    BootPhaseEvent,
    FirmwareStatus,
    GpuHolder,
    HealthEvent,
    Inventory,
    PartitionInfo,
    ScrubProgress,
)


class HostBackend(Protocol):
    """Everything the agent can do to its host. Errors are `hardware.exceptions` subclasses."""

    def inventory(self) -> Inventory: ...

    def bind_vfio(self, address: str) -> None: ...

    def unbind_vfio(self, address: str) -> None: ...

    def list_partitions(self) -> list[PartitionInfo]: ...

    def activate_partition(self, partition_id: int) -> None: ...

    def deactivate_partition(self, partition_id: int) -> None: ...

    def set_activated_partitions(self, partition_ids: Iterable[int]) -> None: ...

    def scrub_gpu(self, module_id: int) -> Iterator[ScrubProgress]: ...

    def check_firmware(self, module_id: int) -> FirmwareStatus: ...

    def level_firmware(self, module_id: int) -> FirmwareStatus: ...

    def reset_gpu(self, module_id: int) -> None: ...

    def gpu_holders(self, module_id: int) -> tuple[GpuHolder, ...]:
        """The processes holding the GPU's VFIO device open, by pid."""
        ...

    def evict_gpu_holders(self, module_id: int) -> tuple[GpuHolder, ...]:
        """Tear the holders down and wait until the device is free; FailedPrecondition if it is not."""
        ...

    def watch_health(self) -> Iterator[HealthEvent]: ...

    def watch_boot(self, vm_id: str) -> Iterator[BootPhaseEvent]: ...
