"""A simulated Kata VM on a host: boot phases from the boot-time model, then its workload.

State is a function of the simulated clock (no thread per VM), so a fleet of thousands of idle
or booting VMs costs only memory.
"""

from __future__ import annotations

import random
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from hardware.boot_model import BAR_MAPPING, DRIVER_INIT, GUEST_PCI_ENUMERATION, PLUG, RAM_PINNING
from hardware.types import BootEstimate, BootPhaseEvent, VmInfo, VmState
from simulator.clock import SimClock

RUNNING_PHASE = "running"
BOOT_SCATTER = 0.08  # a phase's spread around the model's prediction (σ of its log)
FAILED_PHASE = "failed"


@dataclass(slots=True)
class SimVm:
    vm_id: str
    pod_name: str
    modules: tuple[int, ...]
    guest_ram_gib: int
    workload_seconds: float  # 0: runs until stopped
    started: float  # simulated seconds on the clock
    estimate: BootEstimate
    boot_failure: str = ""  # set at start: the workload fails right after boot (e.g. CUDA 802)
    ended: float | None = None  # stopped or failed at this clock time
    end_state: VmState | None = None
    end_detail: str = ""
    phase_bounds: list[tuple[str, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Real boots scatter around the model: each phase takes its predicted time times a factor of
        # its own (lognormal, σ = BOOT_SCATTER, seeded by the VM's id: the same VM boots the same way),
        # so the console's prediction is compared with something it did not produce.
        rng = random.Random(zlib.crc32(self.vm_id.encode()))
        t = self.started
        for name, seconds in self.estimate.phases:
            took = seconds * min(max(rng.lognormvariate(0.0, BOOT_SCATTER), 0.75), 1.5)
            self.phase_bounds.append((name, t, t + took))
            t += took

    @property
    def boot_end(self) -> float:
        return self.phase_bounds[-1][2] if self.phase_bounds else self.started

    def state(self, now: float) -> VmState:
        if self.ended is not None and now >= self.ended:
            return self.end_state or VmState.STOPPED
        if now < self.boot_end:
            return VmState.BOOTING
        if self.boot_failure:
            return VmState.FAILED
        if self.workload_seconds and now >= self.boot_end + self.workload_seconds:
            return VmState.SUCCEEDED
        return VmState.RUNNING

    def holds_gpus(self, now: float) -> bool:
        return self.state(now) in (VmState.BOOTING, VmState.RUNNING)

    def end(self, now: float, state: VmState, detail: str) -> None:
        if self.holds_gpus(now):
            self.ended, self.end_state, self.end_detail = now, state, detail

    def phases(self, clock: SimClock, now: float) -> list[BootPhaseEvent]:
        """Phases finished by `now`, then (when the boot is over) the final event."""
        cut = self.ended if self.ended is not None and self.ended < now else now
        events = [
            BootPhaseEvent(self.vm_id, name, clock.at(start), clock.at(end), _detail(self, name))
            for name, start, end in self.phase_bounds
            if end <= cut
        ]
        final = self._final(clock, now)
        return [*events, final] if final else events

    def _final(self, clock: SimClock, now: float) -> BootPhaseEvent | None:
        if self.ended is not None and self.ended <= now and self.ended < self.boot_end:
            at = clock.at(self.ended)
            return BootPhaseEvent(self.vm_id, FAILED_PHASE, at, at, self.end_detail, final=True, ok=False)
        if now < self.boot_end:
            return None
        at = clock.at(self.boot_end)
        if self.boot_failure:
            return BootPhaseEvent(self.vm_id, FAILED_PHASE, at, at, self.boot_failure, final=True, ok=False)
        return BootPhaseEvent(self.vm_id, RUNNING_PHASE, at, None, f"pod {self.pod_name} running", final=True)

    def info(self, clock: SimClock, now: float) -> VmInfo:
        state = self.state(now)
        detail = self.end_detail if state in (VmState.STOPPED, VmState.FAILED) and self.ended else ""
        if state is VmState.FAILED and not detail:
            detail = self.boot_failure
        return VmInfo(self.vm_id, self.pod_name, self.modules, state, tuple(self.phases(clock, now)), detail)

    def next_change(self, now: float) -> float | None:
        """The clock time of the next phase end (for watchers to wait on)."""
        for _, _, end in self.phase_bounds:
            if end > now:
                return end if self.ended is None else min(end, self.ended)
        return None


def _detail(vm: SimVm, phase: str) -> str:
    if phase == RAM_PINNING:
        return f"{vm.guest_ram_gib} GiB guest RAM"
    if phase in (BAR_MAPPING, PLUG, GUEST_PCI_ENUMERATION, DRIVER_INIT):
        return f"{len(vm.modules)} GPU(s): modules {','.join(map(str, vm.modules))}"
    return ""


class BootWatch(Iterator[BootPhaseEvent]):
    """Streams a VM's phases as the clock passes their ends; ends after the final event."""

    def __init__(self, vm: SimVm, clock: SimClock, lock: threading.Lock) -> None:
        self._vm, self._clock, self._lock = vm, clock, lock
        self._sent = 0
        self._stop = threading.Event()
        self._done = False

    def __next__(self) -> BootPhaseEvent:
        while not self._done:
            with self._lock:
                now = self._clock.seconds()
                events = self._vm.phases(self._clock, now)
                wake = self._vm.next_change(now)
            if self._sent < len(events):
                event = events[self._sent]
                self._sent += 1
                self._done = event.final
                return event
            if self._stop.is_set():
                break
            # Wake at the next phase end; poll occasionally because StopVm may end the VM early.
            target = wake if wake is not None else now + 1.0
            self._clock.wait_until(min(target, now + 0.5 * self._clock.acceleration), self._stop)
        raise StopIteration

    def close(self) -> None:
        self._stop.set()
