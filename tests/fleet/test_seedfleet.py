import pytest
from django.core.management import CommandError, call_command

from console.models import AuditEvent
from fleet.models import Gpu, NvSwitch, Partition, Server

pytestmark = pytest.mark.django_db


def _snapshot():
    return (
        list(Server.objects.values_list("hostname", "rack", "slot", "state").order_by("hostname")),
        list(Gpu.objects.values_list("serial", "uuid", "pci_address", "iommu_group", "firmware_version")
             .order_by("serial")),
        NvSwitch.objects.count(),
        Partition.objects.count(),
        AuditEvent.objects.count(),
    )


def test_seedfleet_is_idempotent():
    call_command("seedfleet", servers=3, racks=2)
    first = _snapshot()
    call_command("seedfleet", servers=3, racks=2)
    assert _snapshot() == first
    assert Server.objects.count() == 3 and Gpu.objects.count() == 24 and Partition.objects.count() == 45


def test_seedfleet_uses_platform_data():
    call_command("seedfleet", servers=1, platform="hgx-h100-8", variant="supermicro")
    gpu = Gpu.objects.get(pci_address="0000:18:00.0")
    assert gpu.module_id == 2  # module ids do not follow PCI order
    assert gpu.firmware_version == "96.00.99.00.01"
    assert len(gpu.serial) == 13 and gpu.uuid.startswith("GPU-")
    assert set(NvSwitch.objects.values_list("iommu_group", flat=True)) == {24}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"platform": "h900"}, "unknown platform"),
    ({"variant": "dell"}, "no variant 'dell'"),
])
def test_seedfleet_refuses_unknown_platform_or_variant(kwargs, message):
    with pytest.raises(CommandError, match=message):
        call_command("seedfleet", servers=1, **kwargs)
    assert Server.objects.count() == 0
