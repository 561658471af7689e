"""The boot-time model reproduces the observations in HARDWARE.md (seed 001)."""

import pytest

from hardware.boot_model import estimate_boot

OLD_HOT = dict(
    platform="hgx-h100-8",
    host_kernel="old",
    iommu_backend="vfio-type1",
    plug_mode="hot",
    hugepages=False,
    guest_kernel="old",
    init_system="systemd",
)
FIXED_COLD = dict(OLD_HOT, host_kernel="fixed", iommu_backend="iommufd", plug_mode="cold")


def test_one_gpu_old_kernel_hot_plug_takes_about_two_minutes():
    total = estimate_boot(1, guest_ram_gib=64, **OLD_HOT).total_seconds
    assert 90 <= total <= 150


def test_eight_gpus_old_kernel_hot_plug_take_about_thirty_minutes():
    total = estimate_boot(8, guest_ram_gib=512, **OLD_HOT).total_seconds
    assert 25 * 60 <= total <= 35 * 60


def test_eight_gpus_fixed_kernel_cold_plug_take_a_few_minutes():
    total = estimate_boot(8, guest_ram_gib=512, **FIXED_COLD).total_seconds
    assert 60 <= total <= 6 * 60


@pytest.mark.parametrize("gpus", [0, 1, 2, 4, 8])
@pytest.mark.parametrize("setup", [OLD_HOT, FIXED_COLD])
def test_phases_sum_to_total_and_are_non_negative(gpus, setup):
    estimate = estimate_boot(gpus, guest_ram_gib=128, **setup)
    assert estimate.total_seconds == pytest.approx(sum(s for _, s in estimate.phases))
    assert all(s >= 0 for _, s in estimate.phases)
    assert estimate.phases[-1][0] == "container-start"


def test_hot_plug_phases_one_per_gpu():
    names = [n for n, _ in estimate_boot(4, guest_ram_gib=64, **OLD_HOT).phases]
    assert [n for n in names if n.startswith("hot-plug")] == [f"hot-plug-gpu-{k}" for k in (1, 2, 3, 4)]


def test_each_improvement_helps():
    base = estimate_boot(8, guest_ram_gib=512, **OLD_HOT).total_seconds
    for change in (
        {"host_kernel": "fixed"},
        {"plug_mode": "cold"},
        {"guest_kernel": "new"},
        {"hugepages": True},
        {"init_system": "nvrc"},
    ):
        assert estimate_boot(8, guest_ram_gib=512, **dict(OLD_HOT, **change)).total_seconds < base, change


def test_ram_pinning_is_about_a_quarter_second_per_gb_with_small_pages():
    phases = dict(estimate_boot(1, guest_ram_gib=100, **OLD_HOT).phases)
    assert phases["ram-pinning"] == pytest.approx(100 * 1.073741824 * 0.25)


def test_larger_bars_map_slower():
    h100 = dict(estimate_boot(8, guest_ram_gib=64, **dict(OLD_HOT, plug_mode="cold")).phases)
    h200 = dict(estimate_boot(8, guest_ram_gib=64, **dict(OLD_HOT, plug_mode="cold", platform="hgx-h200-8")).phases)
    assert 8 * 3.2 <= h100["host-bar-map"] <= 8 * 3.7
    assert h200["host-bar-map"] > h100["host-bar-map"]


@pytest.mark.parametrize("bad", [{"host_kernel": "new"}, {"plug_mode": "warm"}, {"init_system": "upstart"}])
def test_rejects_unknown_settings(bad):
    with pytest.raises(ValueError):
        estimate_boot(1, guest_ram_gib=8, **dict(OLD_HOT, **bad))


@pytest.mark.parametrize(
    ("release", "generation"),
    [
        ("5.15.0-105-generic", "old"),
        ("6.8.0-45-generic", "old"),
        ("6.12.9-generic", "fixed"),
        ("7.0", "fixed"),
        ("weird", "old"),
    ],
)
def test_kernel_generation(release, generation):
    from hardware.boot_model import kernel_generation

    assert kernel_generation(release) == generation
