"""The tenants' pages in Chromium: the list links a tenant's page, which reads without JavaScript
errors and whose forms work with real CSRF; a screenshot for the README."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from console.audit import Actor
from tenants.models import Lease
from tenants.selectors import month_start
from tenants.services import tenant_create
from tenants.states import TENANT_MACHINE, TenantState
from tenants.states import LeaseState as L
from tenants.tokens import api_token_create
from tests.e2e.conftest import login, low_contrast_text
from tests.factories import LeaseFactory, TenantFactory, make_server, make_user
from tests.factories.fleet import TEST_ACTOR
from tests.support.demo import hold

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anydb, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(settings.BASE_DIR) / "docs" / "screenshots"


def _lease(tenant, gpus, state, *, server=None, partition=None, hours_ago=0.0, **times):
    lease = LeaseFactory(tenant=tenant, gpu_count=gpus, state=state, **times)
    fields = {"created_at": timezone.now() - timedelta(hours=hours_ago)}
    if server is not None:
        fields["allocation"] = hold(server, partition, holder=f"lease/{lease.pk}", owner=tenant.name)
    Lease.objects.filter(pk=lease.pk).update(**fields)
    return lease


def _tenants():
    now = timezone.now()
    first = month_start(now)
    servers = [make_server(hostname="gpu-0101"), make_server(hostname="gpu-0102")]
    acme = tenant_create(name="acme", display_name="Acme Research", gpu_quota=16, actor=TEST_ACTOR)
    for state in (TenantState.PROVISIONING, TenantState.READY):  # as its first container onboarded it
        TENANT_MACHINE.transition(acme, state, actor=Actor.system("worker"))
    _lease(acme, 1, L.RELEASED, hours_ago=24 * 40, placed_at=first - timedelta(hours=6),
           releasing_at=first + timedelta(hours=3), released_at=first + timedelta(hours=3, minutes=4))
    _lease(acme, 2, L.FAILED, hours_ago=30, failed_at=now - timedelta(hours=29),
           failure_reason="ImagePullFailed: nvcr.io/acme/trainer:v9 not found")
    _lease(acme, 8, L.RUNNING, server=servers[0], partition=0, hours_ago=5, placed_at=now - timedelta(hours=5),
           running_at=now - timedelta(hours=4, minutes=40))
    _lease(acme, 2, L.RUNNING, server=servers[1], partition=5, hours_ago=1, placed_at=now - timedelta(hours=1))
    _lease(acme, 4, L.PENDING, hours_ago=0.1, pending_reason="no free 4-GPU partition on a schedulable server")
    api_token_create(actor=TEST_ACTOR, tenant=acme, name="ci")
    beta = TenantFactory(name="beta", state=TenantState.READY, gpu_quota=8)
    _lease(beta, 4, L.RUNNING, server=servers[1], partition=1, hours_ago=50, placed_at=now - timedelta(hours=50))
    TenantFactory(name="gamma", state=TenantState.FAILED, failed_at=now - timedelta(minutes=12),
                  failure_reason="namespaces \"tenant-gamma\" is forbidden: exceeded quota: namespaces")
    TenantFactory(name="delta", state=TenantState.PENDING)
    return acme


def test_list_and_tenant_page_for_an_admin(new_page, expect):
    _tenants()
    make_user("admin", username="ada", password="right-password")
    page = login(new_page(viewport=(1280, 900)), "ada")
    page.click("header nav >> text=Tenants")
    expect(page.locator("h1")).to_have_text("Tenants")
    expect(page.locator("#tenant-list tbody tr")).to_have_count(4)
    assert low_contrast_text(page) == []  # a failed tenancy's badge among them
    page.click("#tenant-list >> text=GPUs held")
    expect(page.locator("#tenant-list tbody tr").first).to_contain_text("acme")
    page.click("#tenant-list a[href='/tenants/acme/']")
    expect(page.locator("h1")).to_contain_text("acme")
    expect(page.locator(".steps .st-done")).to_have_count(3)
    expect(page.locator("#tenant-leases tbody tr")).to_have_count(5)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "tenant-page.png"), full_page=True)
    assert low_contrast_text(page) == []

    page.fill("#id_gpu_quota", "-3")
    page.click("#quota-form button")
    expect(page.locator("#quota-form .errorlist")).to_be_visible()
    page.fill("#id_gpu_quota", "24")
    page.click("#quota-form button")
    expect(page.locator(".notes")).to_contain_text("GPU quota of acme is now 24")
    page.fill("#id_name", "deploy")
    page.click("#token-form button")
    assert page.input_value("#new-token-value").startswith("gpc_")
    # Only the refused form's 400 (its response, and Chromium's console line about it).
    others = [p for p in page.problems if not (p.endswith("/tenants/acme/quota/") or "status of 400" in p)]
    assert len(page.problems) == 2 and others == [], page.problems
    page.goto(f"/leases/{Lease.objects.get(state=L.FAILED).pk}/")
    expect(page.locator("h1")).to_contain_text("Failed")
    assert low_contrast_text(page) == []
