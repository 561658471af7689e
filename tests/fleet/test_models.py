"""Database constraints hold the invariants the database can hold."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from fleet.models import AllocationGpu, Gpu, Partition, Server
from tenants.models import Tenant
from tests.factories import AllocationFactory, LeaseFactory, TenantFactory, make_server

pytestmark = pytest.mark.django_db


def _hold(allocation, gpu):
    AllocationGpu.objects.create(allocation=allocation, gpu=gpu, held=True)


def test_gpu_cannot_be_in_two_open_allocations():
    server = make_server()
    gpu = server.gpus.first()
    _hold(AllocationFactory(server=server), gpu)
    with pytest.raises(IntegrityError), transaction.atomic():
        _hold(AllocationFactory(server=server), gpu)


@pytest.mark.postgres
def test_postgres_rejects_a_gpu_in_two_open_allocations():
    from django.db import connection

    assert connection.vendor == "postgresql"
    test_gpu_cannot_be_in_two_open_allocations()


def test_returned_allocation_frees_the_gpu_for_the_next():
    server = make_server()
    gpu = server.gpus.first()
    first = AllocationFactory(server=server)
    _hold(first, gpu)
    AllocationGpu.objects.filter(allocation=first).update(held=False)
    _hold(AllocationFactory(server=server), gpu)
    assert AllocationGpu.objects.filter(gpu=gpu).count() == 2


def test_partition_id_unique_per_server():
    server = make_server()
    with pytest.raises(IntegrityError), transaction.atomic():
        Partition.objects.create(server=server, partition_id=0, module_ids=list(range(1, 9)), size=8)


def test_module_id_unique_per_server():
    server = make_server()
    gpu = server.gpus.first()
    with pytest.raises(IntegrityError), transaction.atomic():
        Gpu.objects.create(
            server=server, module_id=gpu.module_id, pci_address="0000:ff:00.0", iommu_group=999,
            uuid="GPU-dup", serial="dup", vram_mib=1, firmware_version="x",
        )


def test_tenant_name_unique():
    TenantFactory(name="acme")
    with pytest.raises(IntegrityError), transaction.atomic():
        Tenant.objects.create(name="acme")


def test_duplicate_hostname_is_a_validation_error_on_the_field():
    server = make_server()
    dup = Server(hostname=server.hostname, platform="hgx-h100-8", variant="supermicro", rack="x", slot=1)
    with pytest.raises(ValidationError) as exc:
        dup.full_clean()
    assert "hostname" in exc.value.message_dict


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"platform": "h900", "variant": "supermicro"}, "platform"),
        ({"platform": "hgx-h100-8", "variant": "dell"}, "variant"),
        ({"platform": "hgx-h100-8", "variant": "supermicro", "hostname": "Bad_Host"}, "hostname"),
    ],
)
def test_bad_server_input_names_the_field(fields, field):
    server = Server(**{"hostname": "ok-host", "rack": "r1", "slot": 1, **fields})
    with pytest.raises(ValidationError) as exc:
        server.full_clean()
    assert field in exc.value.message_dict


def test_lease_gpu_count_must_be_a_partition_size():
    lease = LeaseFactory.build(tenant=TenantFactory(), gpu_count=3)
    with pytest.raises(ValidationError) as exc:
        lease.full_clean()
    assert "gpu_count" in exc.value.message_dict


def test_make_server_builds_platform_rows():
    server = make_server("dgx-h100")
    assert server.gpus.count() == 8
    assert server.nvswitches.count() == 4
    assert server.partitions.count() == 15
    assert server.gpus.get(pci_address="0000:1b:00.0").module_id == 5
    a100 = make_server("hgx-a100-8")
    assert a100.nvswitches.count() == 6
    assert set(a100.partitions.values_list("partition_id", flat=True)) == {1, 3, 4, 7, 8, 9, 10, *range(15, 23)}
