"""The GPU admin shows what the agent says of a GPU's isolation, read-only (inventory sync owns it)."""

import pytest
from django.contrib import admin
from django.urls import reverse

from fleet.models import Gpu
from tests.factories import UserFactory, make_server

pytestmark = pytest.mark.django_db
REASON = "not alone in its IOMMU group 66: shares it with 0000:3b:00.0 (15b3:1021), which would go to the tenant too"


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_isolation_is_visible_and_read_only(staff_client):
    server = make_server()
    gpu = server.gpus.get(module_id=1)
    Gpu.objects.filter(pk=gpu.pk).update(isolated=False, isolation_reason=REASON)
    assert {"isolated", "isolation_reason"} <= set(admin.site._registry[Gpu].get_readonly_fields(None, gpu))
    html = staff_client.get(reverse("admin:fleet_gpu_change", args=[gpu.pk])).content.decode()
    assert "0000:3b:00.0 (15b3:1021)" in html
    assert 'name="isolated"' not in html and 'name="isolation_reason"' not in html
    changelist = reverse("admin:fleet_gpu_changelist")
    listed = staff_client.get(changelist, {"isolated__exact": "0"})
    assert listed.status_code == 200 and list(listed.context["cl"].result_list) == [gpu]
    server_page = staff_client.get(reverse("admin:fleet_server_change", args=[server.pk])).content.decode()
    assert 'name="gpus-0-isolated"' not in server_page
