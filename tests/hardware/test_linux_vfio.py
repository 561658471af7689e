"""vfio-pci binding through sysfs writes, and the refusals that leave the host unchanged."""

from __future__ import annotations

import pytest

from hardware.exceptions import FailedPrecondition, InvalidArgument, NotFound
from hardware.linux.pci import normalize_address
from hardware.linux.sysfs import SysfsPci
from hardware.linux.vfio import VfioBinder, write_sysfs
from hardware.platforms import NVIDIA_VENDOR_ID, PLATFORMS
from tests.hardware.fixtures.sysfs_tree import BMC_VGA, FakeKernel, build_platform_tree

H100 = PLATFORMS["hgx-h100-8"]
SUPERMICRO = H100.variant("supermicro")
GPU = normalize_address(SUPERMICRO.gpu_bdfs[0])


def binder_for(tmp_path, platform=H100, variant="supermicro", **kwargs):
    tree = build_platform_tree(tmp_path, platform, variant, **kwargs)
    kernel = FakeKernel(tree)
    return tree, kernel, VfioBinder(SysfsPci(tmp_path), kernel)


def test_bind_driverless_gpu(tmp_path):
    tree, kernel, binder = binder_for(tmp_path)
    assert binder.bind(GPU) == [GPU]
    assert kernel.writes == [
        (f"bus/pci/devices/{GPU}/driver_override", "vfio-pci"),
        ("bus/pci/drivers_probe", GPU),
    ]
    assert tree.driver_of(GPU) == "vfio-pci"


def test_bind_unbinds_the_nvidia_driver_first(tmp_path):
    tree, kernel, binder = binder_for(tmp_path, gpu_driver="nvidia")
    binder.bind(GPU)
    assert kernel.writes == [
        (f"bus/pci/devices/{GPU}/driver_override", "vfio-pci"),
        (f"bus/pci/devices/{GPU}/driver/unbind", GPU),
        ("bus/pci/drivers_probe", GPU),
    ]
    assert tree.driver_of(GPU) == "vfio-pci"


def test_bind_is_a_no_op_when_already_bound(tmp_path):
    _, kernel, binder = binder_for(tmp_path, gpu_driver="vfio-pci")
    binder.bind(GPU)
    assert kernel.writes == []


def test_unbind_gives_the_gpu_back(tmp_path):
    tree, kernel, binder = binder_for(tmp_path, gpu_driver="vfio-pci")
    assert binder.unbind(GPU) == [GPU]
    assert kernel.writes == [
        (f"bus/pci/devices/{GPU}/driver_override", "\n"),
        (f"bus/pci/devices/{GPU}/driver/unbind", GPU),
        ("bus/pci/drivers_probe", GPU),
    ]
    assert tree.driver_of(GPU) is None
    assert (tree.device_dir(GPU) / "driver_override").read_text() == "(null)\n"


def test_switch_binds_its_whole_shared_group_with_the_switchtec(tmp_path):
    tree, _, binder = binder_for(tmp_path)
    bound = binder.bind(normalize_address(SUPERMICRO.switch_bdfs[2]))
    expected = {normalize_address(b) for b in (*SUPERMICRO.switch_bdfs, SUPERMICRO.switchtec_bdf)}
    assert set(bound) == expected  # the PCI bridge in the group stays with pcieport
    assert all(tree.driver_of(a) == "vfio-pci" for a in expected)
    assert tree.driver_of(normalize_address(SUPERMICRO.switch_bridge_bdf)) == "pcieport"
    # Asking for the Switchtec endpoint moves the same group.
    assert set(binder.unbind(normalize_address(SUPERMICRO.switchtec_bdf))) == expected


def test_dgx_switch_binds_alone(tmp_path):
    dgx = PLATFORMS["dgx-h100"].variant("dgx")
    _, _, binder = binder_for(tmp_path, PLATFORMS["dgx-h100"], "dgx")
    switch = normalize_address(dgx.switch_bdfs[0])
    assert binder.bind(switch) == [switch]


def _refusal(tmp_path, address, exc, *, setup=None):
    tree, kernel, binder = binder_for(tmp_path)
    if setup:
        setup(tree)
    before = tree.snapshot()
    with pytest.raises(exc):
        binder.bind(address)
    with pytest.raises(exc):
        binder.unbind(address)
    assert kernel.writes == []
    assert tree.snapshot() == before


def test_refuses_non_nvidia_device(tmp_path):
    _refusal(tmp_path, BMC_VGA[0], InvalidArgument)


def test_refuses_unknown_and_malformed_addresses(tmp_path):
    _refusal(tmp_path, "0000:77:00.0", NotFound)


def test_refuses_garbage_address(tmp_path):
    _refusal(tmp_path, "../../etc", InvalidArgument)


def test_refuses_gpu_not_alone_in_its_group(tmp_path):
    def add_nic(tree):
        tree.add_device("0000:19:00.0", 0x15B3, 0x1021, 0x020700, group=SUPERMICRO.gpu_iommu_groups[0])

    _refusal(tmp_path, GPU, FailedPrecondition, setup=add_nic)


def test_refuses_switch_group_with_a_stranger(tmp_path):
    def add_nic(tree):
        tree.add_device("0000:05:00.1", 0x15B3, 0x1021, 0x020700, group=SUPERMICRO.switch_iommu_groups[0])

    _refusal(tmp_path, normalize_address(SUPERMICRO.switch_bdfs[0]), FailedPrecondition, setup=add_nic)


def test_refuses_nvidia_audio_function(tmp_path):
    def add_audio(tree):
        tree.add_device("0000:65:00.1", NVIDIA_VENDOR_ID, 0x1AEF, 0x040300, group=200)

    _refusal(tmp_path, "0000:65:00.1", InvalidArgument, setup=add_audio)


def test_reports_a_bind_the_kernel_did_not_do(tmp_path):
    tree, _, binder = binder_for(tmp_path)
    (tree.root / "bus/pci/drivers/vfio-pci/bind").unlink()
    (tree.root / "bus/pci/drivers/vfio-pci/unbind").unlink()
    (tree.root / "bus/pci/drivers/vfio-pci/new_id").unlink()
    (tree.root / "bus/pci/drivers/vfio-pci").rmdir()  # vfio-pci module not loaded
    with pytest.raises(FailedPrecondition, match="vfio-pci module"):
        binder.bind(GPU)


def test_write_sysfs_writes_one_value(tmp_path):
    target = tmp_path / "driver_override"
    write_sysfs(target, "vfio-pci")
    assert target.read_text() == "vfio-pci"
