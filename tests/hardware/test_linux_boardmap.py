"""Board map files: the module-id → BDF data a host cannot read from PCI."""

from __future__ import annotations

import json

import pytest

from hardware.linux.boardmap import (
    BoardMapError,
    board_map_from_variant,
    load_board_map,
    write_board_map,
)
from hardware.platforms import PLATFORMS

VARIANTS = [(p.key, v.key) for p in PLATFORMS.values() for v in p.variants]


@pytest.mark.parametrize(("platform_key", "variant_key"), VARIANTS)
def test_round_trip(tmp_path, platform_key, variant_key):
    board = board_map_from_variant(platform_key, variant_key)
    write_board_map(board, tmp_path / "board.json")
    loaded = load_board_map(tmp_path / "board.json")
    assert loaded == board
    variant = PLATFORMS[platform_key].variant(variant_key)
    for module_id, bdf in variant.module_to_bdf().items():
        assert loaded.address_of(module_id) == f"0000:{bdf}"
        assert loaded.module_of(f"0000:{bdf}") == module_id


def test_short_bdfs_are_normalised(tmp_path):
    data = board_map_from_variant("hgx-h100-8", "supermicro").to_json()
    data["modules"] = {k: v.removeprefix("0000:").upper() for k, v in data["modules"].items()}
    (tmp_path / "b.json").write_text(json.dumps(data))
    assert load_board_map(tmp_path / "b.json").address_of(2) == "0000:18:00.0"


def _valid() -> dict:
    return board_map_from_variant("hgx-h100-8", "supermicro").to_json()


def _without(key):
    data = _valid()
    del data[key]
    return data


def _with(**changes):
    data = _valid()
    data.update(changes)
    return data


def _modules(**changes):
    data = _valid()
    for key, value in changes.items():
        module = key.removeprefix("m")
        if value is None:
            del data["modules"][module]
        else:
            data["modules"][module] = value
    return data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        (_without("modules"), "missing key(s): modules"),
        (_without("platform"), "missing key(s): platform"),
        (_with(platform="hgx-b300"), "unknown platform"),
        (_with(variant="dell"), "no variant 'dell'"),
        (_with(modules={}), "non-empty object"),
        (_with(modules=["0000:18:00.0"]), "non-empty object"),
        (_modules(m1="not-a-bdf"), "module 1: not a PCI address"),
        (_modules(m1=18), "BDF must be a string"),
        (_modules(m9="0000:ff:00.0"), "module 9 is not a GPU"),
        (_modules(m3=None), "no BDF for module(s) [3]"),
        (_modules(m1="0000:18:00.0"), "two modules share a BDF"),
        (_with(modules={"one": "0000:18:00.0"}), "module id 'one' is not a number"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "board.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(BoardMapError) as err:
        load_board_map(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(BoardMapError, match="cannot read"):
        load_board_map(tmp_path / "absent.json")


def test_extra_keys_are_ignored(tmp_path):
    data = {**_valid(), "hostname": "sim-1", "host": {"kernel": "6.8"}}
    (tmp_path / "b.json").write_text(json.dumps(data))
    assert load_board_map(tmp_path / "b.json") == board_map_from_variant("hgx-h100-8", "supermicro")
