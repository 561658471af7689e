"""One daemon thread that serves a whole simulated fleet (faults, telemetry): started, stopped."""

from __future__ import annotations

import threading
from typing import Self


class FleetThread:
    """Subclasses set `thread_name` and write `_run`, which returns once `_stop` is set."""

    thread_name = "sim"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
