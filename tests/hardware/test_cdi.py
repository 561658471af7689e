"""The CDI spec writer: seed 001's shape, written atomically."""

from __future__ import annotations

import json
import os

import pytest

from hardware.cdi import cdi_spec, write_cdi_spec
from hardware.deviceplugin.devices import PluginDevice


def test_spec_matches_seed_001():
    spec = cdi_spec([PluginDevice(index=1, iommu_group=67), PluginDevice(index=0, iommu_group=66)])
    assert spec == {
        "cdiVersion": "0.7.0",
        "kind": "nvidia.com/gpu",
        "containerEdits": {},
        "devices": [
            {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/vfio/66", "type": "c",
                                                               "permissions": "rwm"}]}},
            {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/vfio/67", "type": "c",
                                                               "permissions": "rwm"}]}},
        ],
    }


def test_duplicate_index_refused():
    with pytest.raises(ValueError):
        cdi_spec([PluginDevice(index=0, iommu_group=1), PluginDevice(index=0, iommu_group=2)])


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    target = write_cdi_spec([PluginDevice(index=6, iommu_group=112)], directory=tmp_path / "cdi", name="nvidia-gpu")
    assert target == tmp_path / "cdi" / "nvidia-gpu.json"
    assert json.loads(target.read_text())["devices"][0]["containerEdits"]["deviceNodes"][0]["path"] == "/dev/vfio/112"
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"

    inode = os.stat(target).st_ino
    write_cdi_spec([PluginDevice(index=6, iommu_group=113)], directory=tmp_path / "cdi", name="nvidia-gpu")
    assert os.stat(target).st_ino != inode  # replaced by rename, never rewritten in place
    assert sorted(p.name for p in (tmp_path / "cdi").iterdir()) == ["nvidia-gpu.json"]


def test_failed_write_keeps_the_old_spec(tmp_path, monkeypatch):
    target = write_cdi_spec([PluginDevice(index=0, iommu_group=1)], directory=tmp_path)
    before = target.read_text()

    def broken_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_cdi_spec([PluginDevice(index=0, iommu_group=2)], directory=tmp_path)
    assert target.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
