"""lease_request and placement with reservation, without a cluster or agents behind them."""

import pytest
from django.core.exceptions import ValidationError

from fleet.models import AllocationGpu, Gpu
from fleet.states import GpuState, ServerState
from tenants import services
from tenants.models import Lease, Tenant
from tenants.states import LeaseState, TenantState
from tests.factories import TenantFactory, make_server
from tests.factories.fleet import TEST_ACTOR

pytestmark = pytest.mark.django_db
IMAGE = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"


def request(tenant, n, image=IMAGE):
    return services.lease_request(tenant_name=tenant.name, image=image, gpu_count=n, actor=TEST_ACTOR)


def test_two_gpu_lease_gets_an_nvlink_pair(tasks, ready_tenant):
    make_server()
    lease = request(ready_tenant, 2)
    assert lease.state == LeaseState.PLACED
    modules = set(lease.gpus.values_list("module_id", flat=True))
    assert modules in ({1, 3}, {2, 4}, {5, 7}, {6, 8})
    assert lease.partition.module_ids == sorted(modules)
    assert set(lease.gpus.values_list("state", flat=True)) == {GpuState.RESERVED}
    assert lease.allocation.holder == f"lease/{lease.pk}" and lease.allocation.owner == ready_tenant.name
    assert tasks.names() == ["lease_advance"]


def test_best_fit_keeps_a_whole_server_for_eight(tasks, ready_tenant):
    a, b = make_server(), make_server()
    first = request(ready_tenant, 1)
    second = request(ready_tenant, 2)
    assert first.server_id == second.server_id
    eight = request(ready_tenant, 8)
    assert eight.state == LeaseState.PLACED and eight.server_id != first.server_id
    assert {a.pk, b.pk} == {first.server_id, eight.server_id}


def test_nothing_fits_stays_pending_with_reason_then_fifo_on_release(tasks, ready_tenant):
    server = make_server()
    held = request(ready_tenant, 8)
    waiting = request(ready_tenant, 4)
    assert waiting.state == LeaseState.PENDING
    assert "no 4-GPU partition free" in waiting.pending_reason
    # Free the server the way a finished lease does, then the queue is retried oldest first.
    AllocationGpu.objects.filter(allocation=held.allocation).update(held=False)
    Gpu.objects.filter(server=server).update(state=GpuState.FREE)
    assert services.leases_place_pending(actor=TEST_ACTOR) == 1
    waiting.refresh_from_db()
    assert waiting.state == LeaseState.PLACED


@pytest.mark.parametrize(("action", "state"), [("server_cordon", ServerState.CORDONED),
                                               ("server_drain", ServerState.DRAINED)])
def test_cordoned_and_drained_servers_get_nothing(tasks, ready_tenant, action, state):
    from fleet import services as fleet_services

    server = make_server()
    getattr(fleet_services, action)(server=server, actor=TEST_ACTOR)
    server.refresh_from_db()
    assert server.state == state  # an idle server drains at once
    lease = request(ready_tenant, 1)
    assert lease.state == LeaseState.PENDING and state in lease.pending_reason
    assert not Gpu.objects.exclude(state=GpuState.FREE).exists()


def test_quarantined_gpu_hides_its_partitions(tasks, ready_tenant):
    from fleet.services import gpu_quarantine

    server = make_server()
    gpu_quarantine(gpu=server.gpus.get(module_id=1), actor=TEST_ACTOR, reason="Xid 48")
    eight = request(ready_tenant, 8)
    assert eight.state == LeaseState.PENDING
    other = TenantFactory(state=TenantState.READY)
    four = request(other, 4)
    assert set(four.gpus.values_list("module_id", flat=True)) == {5, 6, 7, 8}
    # Per-tenant FIFO: the first tenant's 4-GPU lease waits behind its own older 8-GPU lease.
    assert request(ready_tenant, 1).state == LeaseState.PENDING


def test_quota_is_enforced(tasks, ready_tenant):
    make_server()
    make_server()
    ready_tenant.gpu_quota = 8
    ready_tenant.save()
    request(ready_tenant, 8)
    with pytest.raises(services.QuotaExceeded, match="quota of 8"):
        request(ready_tenant, 1)
    assert Lease.objects.count() == 1


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"gpu_count": 3}, "gpu_count"),
    ({"image": "Not An Image!!"}, "image"),
])
def test_bad_input_is_a_validation_error_and_writes_nothing(tasks, ready_tenant, kwargs, field):
    args = {"tenant_name": ready_tenant.name, "image": IMAGE, "gpu_count": 1, "actor": TEST_ACTOR, **kwargs}
    with pytest.raises(ValidationError) as exc:
        services.lease_request(**args)
    assert field in exc.value.message_dict
    assert Lease.objects.count() == 0


def test_bad_tenant_name_is_refused_before_anything_is_created(tasks):
    with pytest.raises(ValidationError) as exc:
        services.lease_request(tenant_name="Bad_Name", image=IMAGE, gpu_count=1, actor=TEST_ACTOR)
    assert "tenant" in exc.value.message_dict


def test_unknown_tenant_is_refused_and_nothing_is_created(tasks):
    with pytest.raises(services.TenantNotFound):
        services.lease_request(tenant_name="newcomer", image=IMAGE, gpu_count=1, actor=TEST_ACTOR)
    assert not Tenant.objects.exists() and not Lease.objects.exists() and tasks.queued == []


def test_first_container_provisions_the_tenancy_and_its_lease_waits(tasks):
    make_server()
    services.tenant_create(name="newcomer", actor=TEST_ACTOR)
    assert tasks.queued == []  # an account alone gets no tenancy
    lease = services.lease_request(tenant_name="newcomer", image=IMAGE, gpu_count=1, actor=TEST_ACTOR)
    assert lease.state == LeaseState.PENDING
    assert lease.tenant.state == TenantState.PENDING
    assert "tenancy" in lease.pending_reason
    assert tasks.names() == ["tenancy_provision"]


def test_release_of_pending_lease_ends_it(tasks, ready_tenant):
    lease = request(ready_tenant, 8)  # no servers at all
    services.lease_release(lease=lease, actor=TEST_ACTOR)
    lease.refresh_from_db()
    assert lease.state == LeaseState.RELEASED


def test_lease_command_lists_where_each_lease_runs(tasks, ready_tenant):
    from io import StringIO

    from django.core.management import call_command

    server = make_server()
    placed = request(ready_tenant, 2)
    out = StringIO()
    call_command("lease", "list", stdout=out)
    line = next(row for row in out.getvalue().splitlines() if row.split()[0] == str(placed.pk))
    assert f"{server.hostname} p{placed.partition.partition_id}" in line and "placed" in line
