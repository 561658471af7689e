"""The CDI spec that tells containerd how to hand a GPU to a container (seed 001, "CDI Device Plugin").

One file, `<directory>/<name>.json`, kind `nvidia.com/gpu`, one device per GPU named by its index,
whose only edit is the GPU's VFIO group node `/dev/vfio/<group>`. containerd reads every spec in
`/var/run/cdi`, so the file is replaced atomically (write a temporary file, fsync, rename): a
reader sees the old spec or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from hardware import kube_constants as kc

CDI_VERSION = "0.7.0"
DEFAULT_DIRECTORY = Path("/var/run/cdi")
DEFAULT_NAME = "gpu-console-nvidia-gpu"


class CdiGpu(Protocol):
    """What the spec needs of a GPU: its index (the CDI device name) and its IOMMU group."""

    index: int
    iommu_group: int


def cdi_spec(gpus: Iterable[CdiGpu]) -> dict[str, Any]:
    """The spec as a dict, devices in index order."""
    devices = [
        {
            "name": str(gpu.index),
            "containerEdits": {
                "deviceNodes": [{"path": f"/dev/vfio/{gpu.iommu_group}", "type": "c", "permissions": "rwm"}],
            },
        }
        for gpu in sorted(gpus, key=lambda g: g.index)
    ]
    if len({d["name"] for d in devices}) != len(devices):
        raise ValueError("two GPUs share an index")
    return {"cdiVersion": CDI_VERSION, "kind": kc.CDI_KIND, "containerEdits": {}, "devices": devices}


def write_cdi_spec(gpus: Iterable[CdiGpu], directory: Path | str = DEFAULT_DIRECTORY,
                   name: str = DEFAULT_NAME) -> Path:
    """Write the spec to `<directory>/<name>.json` atomically; return the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.json"
    data = json.dumps(cdi_spec(gpus), indent=2).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
