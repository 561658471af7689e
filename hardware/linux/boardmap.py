"""The per-board module-id → BDF map.

The fabric manager names GPUs by physical (module) id, which a host without the NVIDIA driver
cannot read from PCI, and which does not follow PCI order. So the map is data, recorded once per
board (e.g. by a trusted test VM that has the driver) in a JSON file:

    {"platform": "hgx-h100-8", "variant": "supermicro", "modules": {"1": "0000:3a:00.0", ...}}

Other keys (the simulator adds `hostname` and `host`) are ignored: LinuxHost reads host facts
from the host itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.exceptions import HardwareError
from hardware.linux.pci import normalize_address
from hardware.platforms import Platform, PlatformError, get_platform


class BoardMapError(HardwareError, ValueError):
    """The board map file is missing, not JSON, or does not describe its platform's board."""


@dataclass(frozen=True)
class BoardMap:
    """Which BDF holds each GPU module on this server."""

    platform: str
    variant: str
    modules: dict[int, str]  # module id → full BDF

    @property
    def platform_data(self) -> Platform:
        return get_platform(self.platform)

    def address_of(self, module_id: int) -> str | None:
        return self.modules.get(module_id)

    def module_of(self, address: str) -> int | None:
        for module_id, bdf in self.modules.items():
            if bdf == address:
                return module_id
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "variant": self.variant,
            "modules": {str(m): bdf for m, bdf in sorted(self.modules.items())},
        }


def board_map_from_variant(platform_key: str, variant_key: str) -> BoardMap:
    """The map a board variant in hardware.platforms records (for writing a node's file)."""
    variant = get_platform(platform_key).variant(variant_key)
    modules = {m: normalize_address(bdf) for m, bdf in variant.module_to_bdf().items()}
    return BoardMap(platform=platform_key, variant=variant_key, modules=modules)


def write_board_map(board_map: BoardMap, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(board_map.to_json(), indent=2) + "\n", encoding="utf-8")


def load_board_map(path: str | os.PathLike[str]) -> BoardMap:
    """Read and validate a board map file; BoardMapError says what is wrong and where."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BoardMapError(f"board map {path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BoardMapError(f"board map {path}: not JSON: {exc}") from None
    return parse_board_map(data, source=str(path))


def parse_board_map(data: Any, *, source: str = "board map") -> BoardMap:
    if not isinstance(data, dict):
        raise BoardMapError(f"{source}: expected a JSON object")
    missing = [key for key in ("platform", "variant", "modules") if key not in data]
    if missing:
        raise BoardMapError(f"{source}: missing key(s): {', '.join(missing)}")
    try:
        platform = get_platform(data["platform"])
        platform.variant(data["variant"])
    except PlatformError as exc:
        raise BoardMapError(f"{source}: {exc}") from None
    raw = data["modules"]
    if not isinstance(raw, dict) or not raw:
        raise BoardMapError(f"{source}: 'modules' must be a non-empty object of module id → BDF")
    modules: dict[int, str] = {}
    for key, value in raw.items():
        try:
            module_id = int(key)
        except (TypeError, ValueError):
            raise BoardMapError(f"{source}: module id {key!r} is not a number") from None
        if module_id not in platform.gpu_ids:
            raise BoardMapError(f"{source}: module {module_id} is not a GPU of {platform.key}")
        if not isinstance(value, str):
            raise BoardMapError(f"{source}: module {module_id}: BDF must be a string")
        try:
            modules[module_id] = normalize_address(value)
        except ValueError as exc:
            raise BoardMapError(f"{source}: module {module_id}: {exc}") from None
    if sorted(modules) != list(platform.gpu_ids):
        absent = sorted(set(platform.gpu_ids) - set(modules))
        raise BoardMapError(f"{source}: no BDF for module(s) {absent}")
    if len(set(modules.values())) != len(modules):
        raise BoardMapError(f"{source}: two modules share a BDF")
    return BoardMap(platform=platform.key, variant=data["variant"], modules=modules)
