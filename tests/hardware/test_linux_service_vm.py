"""Service-VM domain XML and life cycle on libvirt's test driver (no real passthrough there)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest

from hardware.exceptions import FailedPrecondition, NotFound
from hardware.linux.pci import normalize_address
from hardware.linux.service_vm import (
    FABRIC_MANAGER_VM,
    ServiceVms,
    VmSpec,
    domain_xml,
    fabric_manager_vm_spec,
    gpu_vm_spec,
    hostdevs_of,
)
from hardware.linux.sysfs import SysfsPci
from hardware.platforms import PLATFORMS
from tests.hardware.fixtures.libvirt_node import write_test_node
from tests.hardware.fixtures.sysfs_tree import build_platform_tree

VARIANTS = [(p.key, v.key) for p in PLATFORMS.values() for v in p.variants]


def discover(tmp_path, platform_key, variant_key):
    build_platform_tree(tmp_path / "sys", PLATFORMS[platform_key], variant_key)
    return SysfsPci(tmp_path / "sys").discover()


@pytest.mark.parametrize(("platform_key", "variant_key"), VARIANTS)
def test_fabric_manager_vm_owns_every_switch_group_function(tmp_path, platform_key, variant_key):
    variant = PLATFORMS[platform_key].variant(variant_key)
    spec = fabric_manager_vm_spec(discover(tmp_path, platform_key, variant_key))
    expected = {normalize_address(b) for b in variant.switch_bdfs}
    if variant.switchtec_bdf:
        expected.add(normalize_address(variant.switchtec_bdf))
    assert set(spec.hostdevs) == expected  # the PCI bridge is never passed through
    xml = domain_xml(spec)
    assert set(hostdevs_of(xml)) == expected
    root = ET.fromstring(xml)
    for hostdev in root.findall("./devices/hostdev"):
        assert hostdev.attrib == {"mode": "subsystem", "type": "pci", "managed": "yes"}


def test_gpu_vm_has_one_gpu(tmp_path):
    spec = gpu_vm_spec("18:00.0", purpose="scrub", disk_image="/var/lib/gpu/scrub.qcow2")
    assert spec.name == "scrub-0000-18-00-0"
    root = ET.fromstring(domain_xml(spec))
    address = root.find("./devices/hostdev/source/address")
    assert address.attrib == {"domain": "0x0000", "bus": "0x18", "slot": "0x00", "function": "0x0"}
    assert root.find("./devices/disk/source").get("file") == "/var/lib/gpu/scrub.qcow2"
    assert root.get("type") == "kvm"


def test_fabric_manager_vm_needs_switches(tmp_path):
    from hardware.linux.sysfs import Discovery

    with pytest.raises(FailedPrecondition):
        fabric_manager_vm_spec(Discovery(gpus=(), nvswitches=(), switch_mgmt=(), groups={}, skipped=()))


def test_life_cycle_on_default_test_driver(tmp_path):
    vms = ServiceVms("test:///default", require_nodedevs=False)
    spec = fabric_manager_vm_spec(discover(tmp_path, "hgx-h100-8", "supermicro"))
    try:
        vms.define(spec)
        assert not vms.is_running(FABRIC_MANAGER_VM)
        vms.start(FABRIC_MANAGER_VM)
        assert vms.is_running(FABRIC_MANAGER_VM)
        assert set(hostdevs_of(vms.xml(FABRIC_MANAGER_VM))) == set(spec.hostdevs)
        with pytest.raises(FailedPrecondition):
            vms.define(spec)
        vms.destroy(FABRIC_MANAGER_VM)
        assert not vms.is_running(FABRIC_MANAGER_VM)
        vms.undefine(FABRIC_MANAGER_VM)
        with pytest.raises(NotFound):
            vms.xml(FABRIC_MANAGER_VM)
        vms.destroy(FABRIC_MANAGER_VM)  # gone already: nothing to do
        vms.undefine(FABRIC_MANAGER_VM)
    finally:
        vms.close()


@pytest.mark.parametrize(("platform_key", "variant_key"), VARIANTS)
def test_custom_test_driver_host_with_the_node_devices(tmp_path, platform_key, variant_key):
    found = discover(tmp_path, platform_key, variant_key)
    functions = [g.function for g in found.gpus] + list(found.nvswitches) + list(found.switch_mgmt)
    uri = write_test_node(tmp_path / "node.xml", functions)
    vms = ServiceVms(uri)
    try:
        conn = vms.connection()
        names = set(conn.listDevices("pci", 0))
        assert len(names) == len(functions)
        spec = fabric_manager_vm_spec(found)
        vms.define(spec)
        vms.start(spec.name)
        assert conn.lookupByName(spec.name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
        gpu = found.gpus[0].function.address
        with vms.running(gpu_vm_spec(gpu, purpose="scrub")) as name:
            assert vms.is_running(name)
            assert hostdevs_of(vms.xml(name)) == (gpu,)
        assert name not in conn.listDefinedDomains()
        vms.destroy(spec.name)
        vms.undefine(spec.name)
        assert conn.listAllDomains() == []
    finally:
        vms.close()


def test_unknown_hostdev_is_refused_before_define(tmp_path):
    found = discover(tmp_path, "dgx-h100", "dgx")
    uri = write_test_node(tmp_path / "node.xml", list(found.nvswitches))  # no GPUs known to libvirt
    vms = ServiceVms(uri)
    try:
        with pytest.raises(NotFound, match="knows no PCI device"):
            vms.define(gpu_vm_spec(found.gpus[0].function.address, purpose="scrub"))
        assert vms.connection().listAllDomains() == []
    finally:
        vms.close()


def test_running_tears_down_after_an_error(tmp_path):
    vms = ServiceVms("test:///default", require_nodedevs=False)
    spec = VmSpec(name="firmware-x", hostdevs=("0000:18:00.0",), domain_type="test")
    try:
        with pytest.raises(RuntimeError), vms.running(spec):
            raise RuntimeError("guest failed")
        assert not vms.is_running("firmware-x")
        assert "firmware-x" not in vms.connection().listDefinedDomains()
    finally:
        vms.close()
