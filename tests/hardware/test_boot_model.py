"""The boot model: the seeds' two points, HARDWARE.md's orderings, each mechanism moving its own
phase only, and monotonicity (hypothesis)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware.boot_model import PHASES, estimate_boot, kernel_generation, parse_kernel_version, startup_timeout_s

GUEST_RAM_GIB = 64  # tenants.orchestration sizes every lease's VM so
# The seeds' host (001/000): old host kernel, GPUs hot-plugged one by one, old guest kernel, systemd.
SEED = dict(
    platform="hgx-h100-8",
    host_kernel="5.15.0-105-generic",
    iommu_backend="vfio-type1",
    plug_mode="hot",
    hugepages=False,
    guest_kernel="5.15.0",
    firmware="ovmf",
    init_system="systemd",
    guest_ram_gib=GUEST_RAM_GIB,
)
HOST_68 = dict(SEED, host_kernel="6.8.0-45-generic")


def total(gpus, **features):
    return estimate_boot(gpus, **features).total_seconds


def phases(gpus, **features):
    return dict(estimate_boot(gpus, **features).phases)


@pytest.mark.parametrize(("gpus", "observed_s"), [(1, 2 * 60), (8, 30 * 60)])
def test_reproduces_the_seeds_points_within_a_quarter(gpus, observed_s):
    assert 0.75 * observed_s <= total(gpus, **SEED) <= 1.25 * observed_s


# HARDWARE.md, "Orderings the measurements show", as (name, faster, slower, factor): faster × factor < slower.
ORDERINGS = [
    ("1 GiB huge pages < IOMMUFD on 6.8", (8, dict(HOST_68, hugepages=True)),
     (8, dict(HOST_68, iommu_backend="iommufd")), 1),
    ("IOMMUFD <= legacy on 6.8", (8, dict(HOST_68, iommu_backend="iommufd")), (8, HOST_68), 1),
    ("8 GPUs: old host > 5x the 6.8 host", (8, HOST_68), (8, SEED), 5),
    ("old host: 1 GPU < an eighth of 8 GPUs", (1, SEED), (8, SEED), 8),
    ("cold-plug < hot-plug (8 GPUs, old host)", (8, dict(SEED, plug_mode="cold")), (8, SEED), 1),
    ("newer host, IOMMUFD, cold-plug: minutes", (8, dict(HOST_68, host_kernel="6.12.3", qemu_version="9.2.0",
                                                      iommu_backend="iommufd", plug_mode="cold")), (8, SEED), 5),
]


@pytest.mark.parametrize(("name", "faster", "slower", "factor"), ORDERINGS, ids=[o[0] for o in ORDERINGS])
def test_orderings_hardware_md_states(name, faster, slower, factor):
    fast, slow = total(faster[0], **faster[1]), total(slower[0], **slower[1])
    if factor == 1 and "<=" in name:
        assert fast <= slow
    else:
        assert fast * factor < slow


def test_the_30_minutes_become_minutes_on_newer_hosts():
    assert 60 <= total(8, **dict(HOST_68, iommu_backend="iommufd", plug_mode="cold")) <= 6 * 60


# Each mechanism changes the phases it should (and only those) in the direction it should.
MECHANISMS = [
    ("huge pages", dict(hugepages=True), {"ram_pinning"}),
    ("IOMMUFD", dict(iommu_backend="iommufd"), {"ram_pinning"}),
    ("host 6.8 instead of 5.15", dict(host_kernel="6.8.0-45-generic"), {"bar_mapping", "plug"}),
    ("cold-plug", dict(plug_mode="cold"), {"plug"}),
    ("guest kernel batching BAR sizing", dict(guest_kernel="6.14.2"), {"guest_pci_enumeration"}),
    ("SeaBIOS instead of OVMF", dict(firmware="seabios"), {"guest_pci_enumeration"}),
    ("NVRC instead of systemd", dict(init_system="nvrc"), {"init_cdi"}),
]


@pytest.mark.parametrize(("name", "change", "moved"), MECHANISMS, ids=[m[0] for m in MECHANISMS])
def test_each_mechanism_moves_its_phase_and_no_other(name, change, moved):
    base = dict(HOST_68) if "IOMMUFD" in name else dict(SEED)
    before, after = phases(8, **base), phases(8, **dict(base, **change))
    changed = {p for p in PHASES if before[p] != pytest.approx(after[p])}
    assert changed == moved
    assert all(after[p] < before[p] for p in moved)


def test_host_kernel_versions_step_the_bar_mapping_down():
    maps = [phases(8, **dict(SEED, host_kernel=k, qemu_version="9.2.0"))["bar_mapping"]
            for k in ("5.15.0-105-generic", "6.8.0-45", "6.12.3", "6.15.1")]
    assert maps == sorted(maps, reverse=True) and len(set(maps)) == 4
    assert 8 * 3.2 <= phases(8, **HOST_68)["bar_mapping"] <= 8 * 3.75  # HARDWARE.md: 3.2–3.75 s per GPU
    assert phases(8, **dict(SEED, host_kernel="6.15.1", qemu_version="9.2.0"))["bar_mapping"] <= 8 * 0.004


def test_huge_pfnmap_needs_qemu_9_2():
    old_qemu = phases(8, **dict(SEED, host_kernel="6.12.3", qemu_version="8.2.2"))
    assert old_qemu["bar_mapping"] == phases(8, **HOST_68)["bar_mapping"]


def test_iommufd_before_host_6_6_counts_as_legacy():
    assert total(8, **dict(SEED, iommu_backend="iommufd")) == total(8, **SEED)


def test_guest_bar_sizing_toggles_cost_seconds_not_milliseconds():
    # HARDWARE.md: each toggle 2–3.4 s on a 6.12 host (OVMF), 20–40 toggles per 8-GPU boot.
    host_612 = dict(SEED, host_kernel="6.12.3", qemu_version="9.2.0", plug_mode="cold")
    old, new = phases(8, **host_612), phases(8, **dict(host_612, guest_kernel="6.14.0"))
    toggles_s = old["guest_pci_enumeration"] - new["guest_pci_enumeration"]
    assert 16 * 2 <= toggles_s <= 32 * 3.4


def test_ram_pinning_is_a_quarter_second_per_gb_with_small_pages():
    with_ram = phases(1, **dict(SEED, guest_ram_gib=100))["ram_pinning"]
    small = with_ram - phases(1, **dict(SEED, guest_ram_gib=0))["ram_pinning"]
    assert small == pytest.approx(100 * 1.073741824 * 0.25)


def test_cdi_wait_is_about_half_of_a_two_minute_boot():
    share = phases(1, **SEED)["init_cdi"] / total(1, **SEED)
    assert 0.35 <= share <= 0.6


def test_larger_bars_map_slower():
    h100 = phases(8, **dict(HOST_68, plug_mode="cold"))["bar_mapping"]
    h200 = phases(8, **dict(HOST_68, plug_mode="cold", platform="hgx-h200-8"))["bar_mapping"]
    assert h200 > h100


@pytest.mark.parametrize("gpus", [0, 1, 2, 4, 8])
@pytest.mark.parametrize("setup", [SEED, dict(HOST_68, plug_mode="cold")])
def test_all_phases_in_order_non_negative_summing_to_total(gpus, setup):
    estimate = estimate_boot(gpus, **setup)
    assert [p for p, _ in estimate.phases] == list(PHASES)
    assert all(s >= 0 for _, s in estimate.phases)
    assert estimate.total_seconds == pytest.approx(sum(s for _, s in estimate.phases))


@pytest.mark.parametrize("bad", [{"plug_mode": "warm"}, {"init_system": "upstart"}, {"firmware": "uefi"},
                                 {"iommu_backend": "type2"}])
def test_rejects_unknown_settings(bad):
    with pytest.raises(ValueError):
        estimate_boot(1, **dict(SEED, **bad))


KERNELS = ["", "weird", "5.4.0", "5.15.0-105-generic", "6.1.0", "6.6.30", "6.8.0-45-generic", "6.11.0",
           "6.12.3", "6.14.0", "6.15.1", "6.18.0", "7.0"]
features = st.fixed_dictionaries({
    "platform": st.sampled_from(["hgx-h100-8", "hgx-h200-8"]),
    "host_kernel": st.sampled_from(KERNELS),
    "qemu_version": st.sampled_from(["", "6.2.0", "8.2.2", "9.2.0", "10.0.0"]),
    "iommu_backend": st.sampled_from(["vfio-type1", "iommufd"]),
    "plug_mode": st.sampled_from(["hot", "cold"]),
    "hugepages": st.booleans(),
    "guest_kernel": st.sampled_from(["5.15.0", "6.8.0", "6.14.0"]),
    "firmware": st.sampled_from(["ovmf", "seabios"]),
    "init_system": st.sampled_from(["systemd", "nvrc"]),
    "guest_ram_gib": st.integers(0, 2048),
})


def _key(release):
    return parse_kernel_version(release) or (5, 15)


@given(features, st.integers(0, 7), st.integers(1, 8))
def test_more_gpus_never_boot_faster(f, gpus, more):
    assert total(gpus + more, **f) >= total(gpus, **f)


@given(features, st.integers(0, 8), st.integers(1, 1024))
def test_more_ram_never_boots_faster(f, gpus, more):
    assert total(gpus, **dict(f, guest_ram_gib=f["guest_ram_gib"] + more)) >= total(gpus, **f)


@given(features, st.integers(0, 8), st.sampled_from(KERNELS))
def test_a_newer_host_kernel_is_never_slower(f, gpus, other):
    older, newer = sorted([f["host_kernel"], other], key=_key)
    assert total(gpus, **dict(f, host_kernel=newer)) <= total(gpus, **dict(f, host_kernel=older))


@pytest.mark.parametrize(
    ("release", "version"),
    [("5.15.0-105-generic", (5, 15)), ("6.8.0-45", (6, 8)), ("6.12.3", (6, 12)), ("v6.15-rc1", (6, 15)),
     ("7.0", (7, 0)), ("weird", None), ("", None)],
)
def test_parse_kernel_version(release, version):
    assert parse_kernel_version(release) == version


def test_unknown_host_kernel_is_predicted_as_the_oldest():
    assert total(8, **dict(SEED, host_kernel="")) == total(8, **SEED)


@pytest.mark.parametrize(
    ("release", "generation"),
    [("5.15.0-105-generic", "old"), ("6.8.0-45-generic", "old"), ("6.12.9-generic", "fixed"), ("weird", "old")],
)
def test_kernel_generation(release, generation):
    assert kernel_generation(release) == generation


def test_startup_timeout_has_a_margin_over_the_prediction():
    assert startup_timeout_s(100.0, factor=1.5, extra_s=60) == 210
    assert startup_timeout_s(100.2, factor=1.0, extra_s=0) == 101
    with pytest.raises(ValueError):
        startup_timeout_s(100.0, factor=0.9, extra_s=0)
