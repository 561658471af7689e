"""Every model has an admin that lists, searches and filters without errors; state fields are read-only."""

import pytest
from django.contrib import admin
from django.urls import reverse

from console.models import AuditEvent, Operation
from fleet.models import Gpu, NvSwitch, Partition, Server
from tenants.models import BootPhase, Lease, Tenant
from tests.factories import AllocationFactory, LeaseFactory, UserFactory, make_server

pytestmark = pytest.mark.django_db
MODELS = [Server, Gpu, NvSwitch, Partition, Tenant, Lease, BootPhase, AuditEvent, Operation]


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m._meta.label)
def test_changelist_search_and_filter(staff_client, model):
    server = make_server()
    LeaseFactory(allocation=AllocationFactory(server=server))
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert staff_client.get(url).status_code == 200
    assert staff_client.get(url, {"q": "node"}).status_code == 200
    model_admin = admin.site._registry[model]
    assert model_admin.search_fields


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
