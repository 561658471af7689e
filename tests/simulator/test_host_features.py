"""Simulated servers get a realistic, seeded mix of host kernels and boot features."""

from hardware.boot_model import estimate_boot, parse_kernel_version
from simulator.host_features import KERNEL_612, SEED_HOST, UBUNTU_2404, HostFeatures, fleet_mix, qemu_for_kernel


def test_the_mix_is_deterministic_from_the_seed_and_mixed_even_when_small():
    assert fleet_mix(10, seed=5) == fleet_mix(10, seed=5)
    assert any(fleet_mix(4, seed=s) != fleet_mix(4, seed=0) for s in range(1, 6))
    for seed in range(5):
        assert {parse_kernel_version(f.host_kernel) for f in fleet_mix(4, seed=seed)} == {(5, 15), (6, 8), (6, 12)}


def test_newer_hosts_have_iommufd_huge_pages_and_cold_plug():
    assert (SEED_HOST.iommu_backend, SEED_HOST.hugepages, SEED_HOST.plug_mode) == ("vfio-type1", False, "hot")
    assert (UBUNTU_2404.iommu_backend, UBUNTU_2404.hugepages) == ("iommufd", True)
    assert (KERNEL_612.plug_mode, KERNEL_612.init_system, KERNEL_612.qemu_version) == ("cold", "nvrc", "9.2.0")


def test_newer_profiles_boot_eight_gpus_faster():
    totals = [estimate_boot(8, platform="hgx-h100-8", guest_ram_gib=64, **f.boot_arguments()).total_seconds
              for f in (SEED_HOST, UBUNTU_2404, KERNEL_612)]
    assert totals == sorted(totals, reverse=True) and totals[0] > 5 * totals[1]


def test_old_and_fixed_name_releases_and_qemu_follows_the_kernel():
    assert HostFeatures.build(host_kernel="old").host_kernel == "5.15.0-105-generic"
    assert HostFeatures.build(host_kernel="fixed").qemu_version == "9.2.0"
    assert [qemu_for_kernel(k) for k in ("5.15.0-105-generic", "6.8.0-45-generic", "6.12.9", "")] == [
        "6.2.0", "8.2.2", "9.2.0", "6.2.0"]
