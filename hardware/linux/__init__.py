"""The node agent's real host side (`LinuxHost`): sysfs discovery, vfio-pci binding, the fabric
manager's `fmpm` tool and libvirt service VMs.

The host runs no NVIDIA driver (tenants run it in their VMs), so everything here works from PCI
identity in sysfs, a per-board module map, and service VMs that do the driver-side work.
"""
