"""Platforms as data: every table is a valid tree; HGX H100's equals seed 001's `fmctl list`."""

from dataclasses import replace
from pathlib import Path

import pytest

from hardware.platforms import (
    HGX_H100,
    PLATFORMS,
    PartitionSpec,
    PlatformError,
    all_partition_sizes,
    get_platform,
    validate_platform,
)

FMCTL = Path(__file__).parent / "fixtures" / "fmctl_list_seed001.txt"


def parse_fmctl_list(text: str) -> list[tuple[int, int, int, tuple[int, ...]]]:
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0].isdigit():
            pid, _status, gpus, nvlinks, ids = parts
            rows.append((int(pid), int(gpus), int(nvlinks), tuple(int(x) for x in ids.split(","))))
    return rows


def test_hgx_h100_table_equals_seed_fmctl_list():
    rows = parse_fmctl_list(FMCTL.read_text())
    assert len(rows) == 15
    ours = [(p.id, p.size, p.nvlinks, p.gpus) for p in HGX_H100.partitions]
    assert sorted(ours) == sorted(rows)


def test_hopper_pairs_are_not_adjacent_modules():
    pairs = {p.gpus for p in HGX_H100.partitions_of_size(2)}
    assert pairs == {(1, 3), (2, 4), (5, 7), (6, 8)}


@pytest.mark.parametrize("platform", PLATFORMS.values(), ids=lambda p: p.key)
def test_every_platform_table_is_a_tree_covering_every_gpu(platform):
    validate_platform(platform)
    for a in platform.partitions:
        for b in platform.partitions:
            if a.overlaps(b):
                assert a.contains(b) or b.contains(a)
    singles = {p.gpus[0] for p in platform.partitions_of_size(1)}
    assert singles == set(range(1, platform.gpu_count + 1))


@pytest.mark.parametrize("platform", PLATFORMS.values(), ids=lambda p: p.key)
def test_variants_map_modules_to_distinct_bdfs_not_in_pci_order(platform):
    for variant in platform.variants:
        mapping = variant.module_to_bdf()
        assert sorted(mapping) == list(platform.gpu_ids)
        assert len(set(mapping.values())) == platform.gpu_count
        assert list(variant.module_ids) != sorted(variant.module_ids)


def test_hgx_h100_has_26_tilings():
    assert HGX_H100.count_tilings() == 26


def test_a100_has_its_own_table_and_six_switches():
    a100 = get_platform("hgx-a100-8")
    assert a100.nvswitch_count == 6
    assert {p.id for p in a100.partitions} != {p.id for p in HGX_H100.partitions}
    assert a100.partition_sizes == (1, 2, 4, 8)


def test_supermicro_shares_one_switch_group_with_switchtec_and_dgx_does_not():
    supermicro = HGX_H100.variant("supermicro")
    dgx = get_platform("dgx-h100").variant("dgx")
    assert len(supermicro.switch_iommu_groups) == 1 and supermicro.switchtec_bdf
    assert len(dgx.switch_iommu_groups) == 4 and dgx.switchtec_bdf is None


def test_non_tree_table_is_rejected():
    bad = replace(HGX_H100, key="bad", partitions=(*HGX_H100.partitions, PartitionSpec(99, (1, 2), 36)))
    with pytest.raises(PlatformError, match="overlap but do not nest"):
        validate_platform(bad)


def test_gpu_without_single_partition_is_rejected():
    rows = tuple(p for p in HGX_H100.partitions if p.gpus != (8,))
    with pytest.raises(PlatformError, match="1-GPU partition"):
        validate_platform(replace(HGX_H100, key="bad", partitions=rows))


def test_unknown_platform_and_variant_are_clear_errors():
    with pytest.raises(PlatformError, match="unknown platform 'h900'"):
        get_platform("h900")
    with pytest.raises(PlatformError, match="no variant 'dell'"):
        HGX_H100.variant("dell")


def test_request_sizes_come_from_the_tables():
    assert all_partition_sizes() == (1, 2, 4, 8)
