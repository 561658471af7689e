"""An accelerated simulated clock: `acceleration` simulated seconds pass per real second.

With 60× a VM boot the model says takes 30 minutes plays in 30 real seconds, while every event
still carries real-scale times. One clock is shared by all hosts of a process (a fleet).
`advance()` jumps forward (tests, SimAdmin.SetClock) and wakes everyone waiting on the clock.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

# Real waits are sliced so that a changed acceleration or a jump is noticed promptly.
_MAX_REAL_SLICE_S = 0.25


class SimClock:
    def __init__(self, acceleration: float = 60.0, start: datetime | None = None) -> None:
        if acceleration <= 0:
            raise ValueError("acceleration must be > 0")
        self._start = start or datetime.now(UTC).replace(microsecond=0)
        self._acceleration = acceleration
        self._anchor_real = time.monotonic()
        self._anchor_sim = 0.0  # simulated seconds since start at _anchor_real
        self._changed = threading.Condition()

    @property
    def acceleration(self) -> float:
        return self._acceleration

    def seconds(self) -> float:
        """Simulated seconds since the clock's start."""
        return self._anchor_sim + (time.monotonic() - self._anchor_real) * self._acceleration

    def now(self) -> datetime:
        return self.at(self.seconds())

    def at(self, sim_seconds: float) -> datetime:
        """The simulated wall-clock time of a point on the clock."""
        return self._start + timedelta(seconds=sim_seconds)

    def set_acceleration(self, acceleration: float) -> None:
        if acceleration <= 0:
            raise ValueError("acceleration must be > 0")
        with self._changed:
            self._anchor_sim = self.seconds()
            self._anchor_real = time.monotonic()
            self._acceleration = acceleration
            self._changed.notify_all()

    def advance(self, sim_seconds: float) -> None:
        if sim_seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._changed:
            self._anchor_sim += sim_seconds
            self._changed.notify_all()

    def wait_until(self, sim_seconds: float, stop: threading.Event | None = None) -> bool:
        """Block until the clock reaches `sim_seconds`; False if `stop` was set first."""
        with self._changed:
            while True:
                if stop is not None and stop.is_set():
                    return False
                remaining = sim_seconds - self.seconds()
                if remaining <= 0:
                    return True
                self._changed.wait(min(remaining / self._acceleration, _MAX_REAL_SLICE_S))

    def sleep(self, sim_seconds: float, stop: threading.Event | None = None) -> bool:
        return self.wait_until(self.seconds() + sim_seconds, stop)
