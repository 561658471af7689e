"""What the last scrub/firmware VM reported about each GPU, kept on the node's disk.

The host has no NVIDIA driver, so it cannot read a GPU's UUID, serial, VRAM or VBIOS version;
only a service VM that booted with the GPU can. Its report is stored per BDF, one JSON file each,
and inventory() reads it back (falling back to platform data where nothing was reported yet).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hardware.linux.pci import normalize_address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReport:
    """A GPU as a guest with the NVIDIA driver saw it."""

    uuid: str = ""
    serial: str = ""
    vram_mib: int = 0
    firmware_version: str = ""


class GpuRecordStore:
    """One JSON file per GPU under `directory`, written atomically (rename) so a crash leaves either
    the old or the new report."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, address: str) -> Path:
        return self.directory / f"{normalize_address(address)}.json"

    def get(self, address: str) -> GpuReport | None:
        path = self._path(address)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return GpuReport(**{key: data[key] for key in GpuReport.__dataclass_fields__ if key in data})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable GPU record %s: %s", path, exc)
            return None

    def put(self, address: str, report: GpuReport) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(address)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(report), sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
