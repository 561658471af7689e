"""A model of NVIDIA Fabric Manager in shared NVSwitch mode, with the rules HARDWARE.md lists.

- Activating an active partition, or one sharing a GPU with an active one, fails "in use"; the
  blocker is never deactivated for you.
- No deactivation while a VM runs on the partition's GPUs.
- Unknown partition id → bad parameter (InvalidArgument).
- After a restart the operator has 60 simulated seconds to call SetActivatedPartitions; until
  then every other call is refused (AgentUnavailable); on timeout the fabric manager exits and
  stays down until restarted.
- SetActivatedPartitions is accepted only in that window, as in Fabric Manager's resiliency mode
  (`fmSetActivatedFabricPartitions` after a restart); while it runs it is refused
  (FailedPrecondition), so a stale list can never replace the active set under running VMs.
  `restart()` calls `on_restart` (the host announces it on its health stream).
- The list always holds every partition of the table, also those with a lost or excluded GPU:
  hiding them is the console's job.
- A client whose version differs from the fabric manager's is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum

from hardware.exceptions import (
    AgentUnavailable,
    FabricManagerVersionMismatch,
    FailedPrecondition,
    InvalidArgument,
    PartitionInUse,
)
from hardware.platforms import Platform
from hardware.types import PartitionInfo
from simulator.clock import SimClock

RESTART_WINDOW_S = 60.0
DEFAULT_FM_VERSION = "550.90.07"


class FmState(StrEnum):
    RUNNING = "running"
    AWAITING_ACTIVATED_LIST = "awaiting_activated_list"  # the 60 s window after a restart
    EXITED = "exited"


class FabricManager:
    def __init__(
        self,
        platform: Platform,
        clock: SimClock,
        *,
        busy_modules: Callable[[], Mapping[int, str]] = dict,
        version: str = DEFAULT_FM_VERSION,
        active: Iterable[int] = (),
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        """`active`: the partitions active when it starts (the host's boot configuration)."""
        self.platform = platform
        self.version = version
        self._clock = clock
        self._busy_modules = busy_modules  # module id → id of the running VM that holds it
        self._on_restart = on_restart
        self._boot_active = self._disjoint(active)
        self._active: set[int] = set(self._boot_active)
        self._state = FmState.RUNNING
        self._deadline = 0.0
        self._lock = threading.Lock()

    # -- state ---------------------------------------------------------------------------
    @property
    def state(self) -> FmState:
        with self._lock:
            return self._current_state()

    def _current_state(self) -> FmState:
        if self._state is FmState.AWAITING_ACTIVATED_LIST and self._clock.seconds() >= self._deadline:
            self._state = FmState.EXITED  # nobody told it in time: it exits
        return self._state

    def _require_running(self) -> None:
        state = self._current_state()
        if state is FmState.AWAITING_ACTIVATED_LIST:
            remaining = self._deadline - self._clock.seconds()
            raise AgentUnavailable(
                f"fabric manager restarting: waiting for SetActivatedPartitions ({remaining:.0f} s left)"
            )
        if state is FmState.EXITED:
            raise AgentUnavailable("fabric manager not running (exited after its restart window)")

    def _spec(self, partition_id: int):
        spec = self.platform.partitions_by_id.get(partition_id)
        if spec is None:
            raise InvalidArgument(f"bad parameter: unknown partition id {partition_id}")
        return spec

    # -- operations ----------------------------------------------------------------------
    def check_version(self, client_version: str) -> None:
        if client_version != self.version:
            raise FabricManagerVersionMismatch(
                f"version mismatch: client {client_version}, fabric manager {self.version}"
            )

    def list(self) -> list[PartitionInfo]:
        with self._lock:
            self._require_running()
            return [PartitionInfo(p.id, p.id in self._active, p.gpus, p.nvlinks) for p in self.platform.partitions]

    def active_ids(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._active)

    def active_modules(self) -> frozenset[int]:
        with self._lock:
            return frozenset(m for pid in self._active for m in self.platform.partitions_by_id[pid].gpus)

    def activate(self, partition_id: int) -> None:
        with self._lock:
            self._require_running()
            spec = self._spec(partition_id)
            if partition_id in self._active:
                raise PartitionInUse(f"in use: partition {partition_id} is already active")
            for other in sorted(self._active):
                if self.platform.partitions_by_id[other].overlaps(spec):
                    raise PartitionInUse(f"in use: partition {partition_id} shares GPUs with active partition {other}")
            self._active.add(partition_id)

    def deactivate(self, partition_id: int) -> None:
        with self._lock:
            self._require_running()
            spec = self._spec(partition_id)
            if partition_id not in self._active:
                raise FailedPrecondition(f"partition {partition_id} is not active")
            busy = self._busy_modules()
            holders = sorted({busy[m] for m in spec.gpus if m in busy})
            if holders:
                raise FailedPrecondition(
                    f"partition {partition_id} has GPUs in running VM(s) {', '.join(holders)}: stop them"
                )
            self._active.discard(partition_id)

    def _disjoint(self, partition_ids: Iterable[int]) -> frozenset[int]:
        ids = sorted(set(partition_ids))
        specs = [self._spec(pid) for pid in ids]
        for i, a in enumerate(specs):
            for b in specs[i + 1 :]:
                if a.overlaps(b):
                    raise InvalidArgument(f"bad parameter: partitions {a.id} and {b.id} share GPUs")
        return frozenset(ids)

    def set_activated(self, partition_ids: Iterable[int]) -> None:
        """Tell a restarted fabric manager which partitions are still active; ends its window.

        Only while it waits after a restart: FailedPrecondition while it runs, AgentUnavailable once
        it has exited.
        """
        with self._lock:
            state = self._current_state()
            if state is FmState.EXITED:
                raise AgentUnavailable("fabric manager not running (exited after its restart window)")
            if state is FmState.RUNNING:
                raise FailedPrecondition(
                    "SetActivatedPartitions is only accepted after a fabric-manager restart, while it waits "
                    "for the list of active partitions; it is running: use Activate/DeactivatePartition"
                )
            self._active = set(self._disjoint(partition_ids))
            self._state = FmState.RUNNING

    def restart(self) -> None:
        """Restart: it forgets the active set and waits RESTART_WINDOW_S for SetActivatedPartitions."""
        with self._lock:
            self._active = set()
            self._state = FmState.AWAITING_ACTIVATED_LIST
            self._deadline = self._clock.seconds() + RESTART_WINDOW_S
        if self._on_restart is not None:
            self._on_restart()

    def reset(self) -> None:
        """A host reboot: a fresh fabric manager with its boot configuration's partitions active."""
        with self._lock:
            self._active = set(self._boot_active)
            self._state = FmState.RUNNING
