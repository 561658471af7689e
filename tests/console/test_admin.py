"""Every model has an admin that lists, searches and filters without errors; state fields are read-only."""

import pytest
from django.contrib import admin
from django.urls import reverse

from console.models import AuditEvent, Operation
from fleet.models import Gpu, NvSwitch, Partition, Server
from simcontrol.models import GeneratedLease, Simulation
from tenants.models import BootPhase, Lease, Tenant
from tests.factories import AllocationFactory, LeaseFactory, UserFactory, make_server

pytestmark = pytest.mark.django_db
MODELS = [Server, Gpu, NvSwitch, Partition, Tenant, Lease, BootPhase, AuditEvent, Operation, Simulation, GeneratedLease]


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.mark.anydb
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m._meta.label)
def test_changelist_search_and_filter(staff_client, model):
    server = make_server()
    LeaseFactory(allocation=AllocationFactory(server=server))
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert staff_client.get(url).status_code == 200
    assert staff_client.get(url, {"q": "node"}).status_code == 200
    model_admin = admin.site._registry[model]
    assert model_admin.search_fields


@pytest.mark.anydb
@pytest.mark.parametrize("model", [Server, Gpu, Partition, Tenant, Lease], ids=lambda m: m._meta.label)
def test_state_is_read_only_in_the_admin(staff_client, model):
    make_server()
    LeaseFactory()
    obj = model.objects.first()
    model_admin = admin.site._registry[model]
    assert "state" in model_admin.get_readonly_fields(None, obj)
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[obj.pk])
    html = staff_client.get(url).content.decode()
    assert 'name="state"' not in html


def test_audit_log_cannot_be_edited_or_deleted(staff_client):
    server = make_server()
    event = AuditEvent.objects.filter(target_id=str(server.pk)).first()
    url = reverse("admin:console_auditevent_change", args=[event.pk])
    assert 'name="verb"' not in staff_client.get(url).content.decode()
    delete = reverse("admin:console_auditevent_delete", args=[event.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    with pytest.raises(TypeError):
        event.save()


def test_admin_form_rejects_bad_tenant_name(staff_client):
    response = staff_client.post(reverse("admin:tenants_tenant_add"), {"name": "Bad_Name", "display_name": "x",
                                                                      "gpu_quota": 8})
    assert response.status_code == 200
    assert "DNS-1123" in response.content.decode()
    assert not Tenant.objects.exists()


@pytest.mark.parametrize("model", [Server, Gpu, NvSwitch, Partition, Lease, BootPhase], ids=lambda m: m._meta.label)
def test_service_managed_rows_cannot_be_added_or_deleted_by_hand(staff_client, model):
    make_server()
    LeaseFactory()
    add = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")
    assert staff_client.get(add).status_code == 403
    obj = model.objects.first()
    if obj is not None:
        delete = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_delete", args=[obj.pk])
        assert staff_client.post(delete, {"post": "yes"}).status_code == 403
        assert model.objects.filter(pk=obj.pk).exists()


def test_agent_reported_fields_and_a_registered_platform_are_read_only(staff_client):
    server = make_server()
    gpu = server.gpus.first()
    html = staff_client.get(reverse("admin:fleet_gpu_change", args=[gpu.pk])).content.decode()
    for field in ("pci_address", "iommu_group", "uuid", "serial", "vram_mib", "firmware_version", "temperature_c",
                  "ecc_corrected", "ecc_uncorrected", "row_remaps", "last_xid"):
        assert f'name="{field}"' not in html, field
    html = staff_client.get(reverse("admin:fleet_server_change", args=[server.pk])).content.decode()
    assert 'name="platform"' not in html and 'name="variant"' not in html
    assert 'name="rack"' in html, "descriptive fields stay editable"
    # Adding is not offered at all (servers come from registration).
    assert staff_client.get(reverse("admin:fleet_server_add")).status_code == 403


def test_tenants_are_created_and_deleted_through_services(staff_client):
    response = staff_client.post(reverse("admin:tenants_tenant_add"),
                                 {"name": "acme", "display_name": "Acme", "gpu_quota": 24})
    assert response.status_code == 302
    tenant = Tenant.objects.get(name="acme")
    assert tenant.gpu_quota == 24
    verbs = list(AuditEvent.objects.filter(target_type="tenants.tenant", target_id=str(tenant.pk))
                 .values_list("verb", flat=True))
    assert verbs == ["tenants.tenant.created"]  # opened with its quota by tenant_create, one event
    staff_client.post(reverse("admin:tenants_tenant_delete", args=[tenant.pk]), {"post": "yes"})
    tenant.refresh_from_db()
    assert tenant.state == "deleting", "a delete runs the deleting path; the row stays for its teardown"
    assert AuditEvent.objects.filter(verb="tenants.tenant.deleting", target_id=str(tenant.pk)).exists()


def test_a_tenant_with_running_leases_is_not_deleted(staff_client):
    lease = LeaseFactory(state="running")
    response = staff_client.post(reverse("admin:tenants_tenant_delete", args=[lease.tenant.pk]), {"post": "yes"})
    assert response.status_code in (200, 403)  # the admin lists the protected leases, or the service refuses
    assert Tenant.objects.get(pk=lease.tenant.pk).state != "deleting"
    from console.audit import Actor
    from console.errors import Conflict
    from tenants.services import tenant_delete

    with pytest.raises(Conflict, match="1 unfinished lease"):
        tenant_delete(tenant=lease.tenant, actor=Actor.system("t"))


def test_operations_cannot_be_deleted_and_names_read_well(staff_client):
    from console.audit import Actor
    from console.operations import operation_start

    op = operation_start(kind="server.drain", target=make_server(), actor=Actor.system("t"))
    delete = reverse("admin:console_operation_delete", args=[op.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    assert NvSwitch._meta.verbose_name_plural == "NVSwitches" and Gpu._meta.verbose_name_plural == "GPUs"
    assert "NVSwitches" in staff_client.get(reverse("admin:index")).content.decode()
