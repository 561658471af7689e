"""Service VMs through libvirt: the fabric-manager VM and short-lived scrub/firmware VMs.

The fabric-manager VM owns the NVSwitch IOMMU group(s) whole: every function in them, including
the Switchtec management endpoint that Supermicro HGX boards put in the switches' group. A scrub
or firmware VM gets one GPU. All devices are `<hostdev mode='subsystem' type='pci' managed='yes'>`,
so libvirt itself detaches them to vfio-pci on start and gives them back on destroy.

Tested on libvirt's test driver (`test:///default`, or `test:///<file>.xml` describing the node's
PCI devices as nodedevs). That driver keeps the domain XML and its life cycle but performs no
passthrough: it neither detaches devices to vfio-pci nor checks that a hostdev exists, which is why
`ServiceVms` itself checks each hostdev against the connection's node devices before defining.
"""

from __future__ import annotations

import contextlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field

import libvirt

from hardware.exceptions import AgentUnavailable, FailedPrecondition, HardwareError, NotFound
from hardware.linux.pci import nodedev_name, normalize_address
from hardware.linux.sysfs import Discovery

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
FABRIC_MANAGER_VM = "fabric-manager"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class VmSpec:
    """What a service VM is: name, size, boot disk and the PCI functions passed through."""

    name: str
    hostdevs: tuple[str, ...]
    memory_mib: int = 4096
    vcpus: int = 2
    disk_image: str | None = None
    domain_type: str = "kvm"
    metadata: dict[str, str] = field(default_factory=dict)


def fabric_manager_vm_spec(discovery: Discovery, *, disk_image: str | None = None, **kwargs) -> VmSpec:
    """The fabric-manager VM: every function of every NVSwitch IOMMU group, Switchtec included."""
    groups = discovery.switch_groups
    if not groups:
        raise FailedPrecondition("no NVSwitch found: nothing for a fabric-manager VM to own")
    members = {fn.address for fn in (*discovery.nvswitches, *discovery.switch_mgmt) if fn.iommu_group in groups}
    return VmSpec(name=FABRIC_MANAGER_VM, hostdevs=tuple(sorted(members)), disk_image=disk_image, **kwargs)


def gpu_vm_spec(address: str, *, purpose: str, disk_image: str | None = None, **kwargs) -> VmSpec:
    """A short-lived scrub or firmware VM holding one GPU, named after it."""
    bdf = normalize_address(address)
    name = f"{purpose}-{bdf.replace(':', '-').replace('.', '-')}"
    return VmSpec(
        name=name, hostdevs=(bdf,), disk_image=disk_image, metadata={"purpose": purpose, "gpu": bdf}, **kwargs
    )


def domain_xml(spec: VmSpec) -> str:
    """libvirt domain XML for a service VM (q35, host CPU, a guest-agent channel for progress)."""
    domain = ET.Element("domain", type=spec.domain_type)
    ET.SubElement(domain, "name").text = spec.name
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.vcpus)
    if spec.metadata:
        description = "; ".join(f"{k}={v}" for k, v in sorted(spec.metadata.items()))
        ET.SubElement(domain, "description").text = description
    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="q35").text = "hvm"
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    devices = ET.SubElement(domain, "devices")
    if spec.disk_image:
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=spec.disk_image)
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
    for address in spec.hostdevs:
        devices.append(hostdev_element(address))
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    return ET.tostring(domain, encoding="unicode")


def hostdev_element(address: str) -> ET.Element:
    domain_part, bus, rest = normalize_address(address).split(":")
    slot, function = rest.split(".")
    hostdev = ET.Element("hostdev", mode="subsystem", type="pci", managed="yes")
    source = ET.SubElement(hostdev, "source")
    ET.SubElement(
        source,
        "address",
        domain=f"0x{domain_part}",
        bus=f"0x{bus}",
        slot=f"0x{slot}",
        function=f"0x{function}",
    )
    return hostdev


def hostdevs_of(xml: str) -> tuple[str, ...]:
    """The PCI addresses a domain's XML passes through (to check what libvirt stored)."""
    root = ET.fromstring(xml)
    found = []
    for address in root.findall("./devices/hostdev[@type='pci']/source/address"):
        found.append(
            "{:04x}:{:02x}:{:02x}.{:x}".format(
                *(int(address.get(key, "0"), 16) for key in ("domain", "bus", "slot", "function"))
            )
        )
    return tuple(found)


class ServiceVms:
    """Define, start, destroy and undefine service VMs on one libvirt connection."""

    def __init__(self, uri: str = DEFAULT_URI, *, require_nodedevs: bool = True) -> None:
        self.uri = uri
        self.require_nodedevs = require_nodedevs
        self._conn: libvirt.virConnect | None = None

    def connection(self) -> libvirt.virConnect:
        if self._conn is None:
            # libvirt prints every error to stderr by default; we raise them instead.
            libvirt.registerErrorHandler(_quiet, None)
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise AgentUnavailable(f"libvirt {self.uri}: {exc}") from None
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None

    def check_hostdevs(self, spec: VmSpec) -> None:
        """Refuse a VM whose hostdevs the host's libvirt does not know as PCI node devices."""
        conn = self.connection()
        missing = []
        for address in spec.hostdevs:
            try:
                conn.nodeDeviceLookupByName(nodedev_name(address))
            except libvirt.libvirtError:
                missing.append(address)
        if missing:
            raise NotFound(f"VM {spec.name}: libvirt knows no PCI device {', '.join(missing)}")

    def define(self, spec: VmSpec) -> None:
        if self.require_nodedevs:
            self.check_hostdevs(spec)
        if self.is_running(spec.name):
            raise FailedPrecondition(f"VM {spec.name} is already running")
        try:
            self.connection().defineXML(domain_xml(spec))  # replaces a stale inactive definition
        except libvirt.libvirtError as exc:
            raise HardwareError(f"defining VM {spec.name}: {exc}") from None

    def start(self, name: str) -> None:
        try:
            self._lookup(name).create()
        except libvirt.libvirtError as exc:
            raise HardwareError(f"starting VM {name}: {exc}") from None

    def destroy(self, name: str) -> None:
        """Power the VM off; a VM that is not running (or not defined) is left as it is."""
        domain = self._find(name)
        if domain is not None and domain.isActive():
            try:
                domain.destroy()
            except libvirt.libvirtError as exc:
                raise HardwareError(f"destroying VM {name}: {exc}") from None

    def undefine(self, name: str) -> None:
        domain = self._find(name)
        if domain is not None:
            try:
                domain.undefine()
            except libvirt.libvirtError as exc:
                raise HardwareError(f"undefining VM {name}: {exc}") from None

    def is_running(self, name: str) -> bool:
        domain = self._find(name)
        return bool(domain is not None and domain.isActive())

    def xml(self, name: str) -> str:
        return self._lookup(name).XMLDesc(0)

    @contextlib.contextmanager
    def running(self, spec: VmSpec) -> Iterator[str]:
        """Define and start a short-lived VM; always destroy and undefine it afterwards."""
        self.define(spec)
        try:
            self.start(spec.name)
            yield spec.name
        finally:
            self.destroy(spec.name)
            self.undefine(spec.name)

    def _find(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.connection().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise AgentUnavailable(f"libvirt {self.uri}: {exc}") from None

    def _lookup(self, name: str) -> libvirt.virDomain:
        domain = self._find(name)
        if domain is None:
            raise NotFound(f"no VM {name}")
        return domain


def _quiet(_ctx: object, _error: object) -> None:
    return None
