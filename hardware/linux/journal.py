"""Health and VM boot events from a JSON-lines journal file.

Without the NVIDIA driver the host sees no Xid errors itself: they surface inside tenants' VMs and
service VMs, whose agents (and the VM runtime, for boot phases) append one JSON object a line to
this journal. This reader turns the lines into HealthEvent / BootPhaseEvent. That is all that is
real about health here; collecting from tenant VMs is outside this module.

    {"type": "health", "module_id": 3, "kind": "xid", "at": "2026-11-22T19:00:00+00:00", "xid": 79}
    {"type": "boot", "vm_id": "vm-1", "phase": "vfio-map", "started_at": "...", "final": false}

A fabric-manager restart may be written here too (module id 0, kind "fabric_manager_restarted");
LinuxHost also detects one itself by probing the fabric manager (fabric_manager.RestartDetector).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from hardware.types import BootPhaseEvent, HealthEvent, HealthKind

log = logging.getLogger(__name__)


class EventJournal:
    """Reads (and, for the writers' convenience, appends to) one JSON-lines file."""

    def __init__(self, path: str | os.PathLike[str], *, poll_s: float = 0.5) -> None:
        self.path = Path(path)
        self.poll_s = poll_s

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def records(self, *, follow: bool = False, stop: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """Every record, oldest first; with `follow`, keep waiting for new lines until `stop` is set."""
        position = 0
        while True:
            batch, position = self.read_from(position)
            yield from batch
            if not follow or (stop is not None and stop.is_set()):
                return
            time.sleep(self.poll_s)

    def read_from(self, position: int) -> tuple[list[dict[str, Any]], int]:
        """The complete records after byte `position`, and the position after the last of them."""
        batch: list[dict[str, Any]] = []
        try:
            with open(self.path, encoding="utf-8") as handle:
                handle.seek(position)
                while line := handle.readline():
                    if not line.endswith("\n"):
                        break  # a writer is mid-line: read it on the next pass
                    position = handle.tell()
                    record = _parse(line)
                    if record is not None:
                        batch.append(record)
        except FileNotFoundError:
            pass
        return batch, position

    def health_from(self, hostname: str, position: int) -> tuple[list[HealthEvent], int]:
        """The health events after byte `position` (see read_from)."""
        records, position = self.read_from(position)
        events = [_health(hostname, r) for r in records if r.get("type") == "health"]
        return [e for e in events if e is not None], position

    def health(self, hostname: str, **kwargs: Any) -> Iterator[HealthEvent]:
        for record in self.records(**kwargs):
            if record.get("type") == "health":
                event = _health(hostname, record)
                if event is not None:
                    yield event

    def boot(self, vm_id: str, **kwargs: Any) -> Iterator[BootPhaseEvent]:
        """Boot phases of one VM, ending with its final event."""
        for record in self.records(**kwargs):
            if record.get("type") == "boot" and record.get("vm_id") == vm_id:
                event = _boot(record)
                if event is None:
                    continue
                yield event
                if event.final:
                    return


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        log.warning("skipping a journal line that is not JSON: %r", line[:80])
        return None
    return record if isinstance(record, dict) else None


def _health(hostname: str, record: dict[str, Any]) -> HealthEvent | None:
    try:
        return HealthEvent(
            hostname=hostname,
            module_id=int(record["module_id"]),
            kind=HealthKind(record["kind"]),
            at=datetime.fromisoformat(record["at"]),
            xid=record.get("xid"),
            action=record.get("action", ""),
            message=record.get("message", ""),
            temperature_c=record.get("temperature_c"),
            ecc_corrected=record.get("ecc_corrected"),
            ecc_uncorrected=record.get("ecc_uncorrected"),
            row_remaps=record.get("row_remaps"),
            nvlink_errors=record.get("nvlink_errors"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        log.warning("skipping a malformed health record %r: %s", record, exc)
        return None


def _boot(record: dict[str, Any]) -> BootPhaseEvent | None:
    try:
        ended = record.get("ended_at")
        return BootPhaseEvent(
            vm_id=record["vm_id"],
            phase=record["phase"],
            started_at=datetime.fromisoformat(record["started_at"]),
            ended_at=datetime.fromisoformat(ended) if ended else None,
            detail=record.get("detail", ""),
            final=bool(record.get("final", False)),
            ok=bool(record.get("ok", True)),
        )
    except (KeyError, ValueError, TypeError) as exc:
        log.warning("skipping a malformed boot record %r: %s", record, exc)
        return None
