"""The tenants' pages: the list and a tenant's page for every role; quota edits and API tokens for
admins only (no buttons for others, 403 on their POSTs, nothing written); form errors for bad
quotas; every change audited; the list's queries do not grow with the number of tenants."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from console.models import AuditEvent
from tenants.models import ApiToken, Lease, Tenant
from tenants.states import LeaseState, TenantState
from tenants.tokens import api_token_authenticate, api_token_create
from tests.factories import LeaseFactory, TenantFactory, make_server, make_user
from tests.factories.fleet import TEST_ACTOR
from tests.support.demo import hold

pytestmark = pytest.mark.django_db
ROLES = ("anonymous", "none", "viewer", "support", "admin")
CAN_READ = {"anonymous": 302, "none": 403, "viewer": 200, "support": 200, "admin": 200}
CAN_ADMINISTER = {"anonymous": 302, "none": 403, "viewer": 403, "support": 403, "admin": 302}


def _client(client, role):
    if role != "anonymous":
        client.force_login(make_user(None if role == "none" else role))
    return client


@pytest.fixture
def acme():
    """A ready tenant with a running 4-GPU lease on a server and a pending 2-GPU one, and a token."""
    tenant = TenantFactory(name="acme", state=TenantState.READY, gpu_quota=8)
    server = make_server()
    lease = LeaseFactory(tenant=tenant, gpu_count=4, state=LeaseState.RUNNING)
    allocation = hold(server, 2, holder=f"lease/{lease.pk}", owner="acme")
    Lease.objects.filter(pk=lease.pk).update(allocation=allocation)
    LeaseFactory(tenant=tenant, gpu_count=2, state=LeaseState.PENDING, pending_reason="no 2-GPU partition free")
    api_token_create(actor=TEST_ACTOR, tenant=tenant, name="ci")
    return tenant


def _audits(verb):
    return AuditEvent.objects.filter(verb=verb)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_as_its_role_allows(client, acme, role):
    c = _client(client, role)
    for url in ("/tenants/", "/tenants/acme/"):
        response = c.get(url)
        assert response.status_code == CAN_READ[role], url
        if role == "anonymous":
            assert response["Location"].startswith("/login/")


@pytest.mark.parametrize("role", ROLES)
def test_only_admins_change_quotas_and_tokens(client, acme, role):
    c = _client(client, role)
    token = acme.api_tokens.get()
    assert c.post("/tenants/acme/quota/", {"gpu_quota": "24"}).status_code == CAN_ADMINISTER[role]
    created = c.post("/tenants/acme/tokens/", {"name": "deploy"})
    assert created.status_code == (200 if role == "admin" else CAN_ADMINISTER[role])
    assert c.get(f"/tenants/acme/tokens/{token.pk}/revoke/").status_code == (
        200 if role == "admin" else CAN_ADMINISTER[role])
    assert c.post(f"/tenants/acme/tokens/{token.pk}/revoke/").status_code == CAN_ADMINISTER[role]
    acme.refresh_from_db()
    token.refresh_from_db()
    if role == "admin":
        assert acme.gpu_quota == 24 and token.revoked_at is not None and acme.api_tokens.count() == 2
    else:
        assert acme.gpu_quota == 8 and token.revoked_at is None and acme.api_tokens.count() == 1
        assert not AuditEvent.objects.filter(actor__isnull=False).exists()


@pytest.mark.parametrize("role", ["viewer", "support", "admin"])
def test_admin_controls_are_rendered_only_for_admins(client, acme, role):
    html = _client(client, role).get("/tenants/acme/").content.decode()
    for control in ('id="quota-form"', 'id="token-form"', "/revoke/", "Save quota", "Create token"):
        assert (control in html) == (role == "admin"), control


def test_the_list_shows_state_use_quota_running_leases_and_hours(client, acme):
    TenantFactory(name="beta", state=TenantState.FAILED, failure_reason="namespace quota exceeded in the cluster")
    html = _client(client, "viewer").get("/tenants/").content.decode()
    row = re.search(rf'<tr id="tenant-{acme.pk}">.*?</tr>', html, re.S).group(0)
    assert 'href="/tenants/acme/"' in row and 'class="ts ts-ready">Ready<' in row
    assert "<b>4</b> / 8" in row and "+2 waiting" in row
    beta = re.search(r'<tr id="tenant-\d+">(?:(?!</tr>).)*beta.*?</tr>', html, re.S).group(0)
    assert "ts-failed" in beta and "namespace quota exceeded" in beta
    assert 'href="/tenants/"' in html, "the nav links the list"


def test_the_list_sorts_by_a_column_and_ignores_unknown_sorts(client, acme):
    TenantFactory(name="aardvark")
    c = _client(client, "viewer")
    names = lambda html: re.findall(r'<th scope="row"><a href="/tenants/([a-z0-9-]+)/">', html)  # noqa: E731
    assert names(c.get("/tenants/").content.decode()) == ["aardvark", "acme"]
    assert names(c.get("/tenants/?sort=gpus").content.decode()) == ["acme", "aardvark"]
    assert names(c.get("/tenants/?sort=drop+table").content.decode()) == ["aardvark", "acme"]


def test_the_list_costs_the_same_queries_for_3_or_30_tenants(client):
    c = _client(client, "viewer")
    server = make_server()

    def add(n):
        for _ in range(n):
            tenant = TenantFactory(state=TenantState.READY)
            LeaseFactory(tenant=tenant, gpu_count=1, state=LeaseState.RUNNING, placed_at=tenant.created_at)
            LeaseFactory(tenant=tenant, gpu_count=2, state=LeaseState.RELEASED)
        return server

    add(3)
    c.get("/tenants/")  # warm the session and permission caches
    with CaptureQueriesContext(connection) as few:
        assert c.get("/tenants/").status_code == 200
    add(27)
    with CaptureQueriesContext(connection) as many:
        html = c.get("/tenants/").content.decode()
    assert html.count('<tr id="tenant-') == 30
    assert len(many) == len(few), [q["sql"] for q in many]


def test_the_tenant_page_shows_onboarding_use_leases_and_tokens(client, acme):
    html = _client(client, "viewer").get("/tenants/acme/").content.decode()
    assert html.count('class="step st-done"') == 3 and "Namespace tenant-acme" in html
    lease = acme.leases.get(state=LeaseState.RUNNING)
    assert f'href="/leases/{lease.pk}/"' in html and f'href="/servers/{lease.allocation.server_id}/"' in html
    assert "no 2-GPU partition free" in html
    assert "gpc_" + acme.api_tokens.get().prefix in html
    assert re.search(r"<dt>GPUs held</dt><dd>4 ", html) and re.search(r"<dt>GPUs waiting</dt><dd>2 ", html)


@pytest.mark.parametrize("state, reason, expect", [
    (TenantState.FAILED, "namespaces \"tenant-acme\" is forbidden: exceeded quota", ["st-failed", "is forbidden"]),
    (TenantState.PROVISIONING, "re-ensuring: namespace, network policy missing in the cluster",
     ["st-missing", "missing in the cluster: being re-created"]),
    (TenantState.PROVISIONING, "retrying: cluster unreachable", ["st-pending", "retrying: cluster unreachable"]),
    (TenantState.PENDING, "", ["st-pending", "queued"]),
])
def test_the_onboarding_shows_what_is_missing_and_why_it_failed(client, acme, state, reason, expect):
    Tenant.objects.filter(pk=acme.pk).update(state=state, failure_reason=reason)
    html = _client(client, "viewer").get("/tenants/acme/").content.decode()
    for text in expect:
        assert text in html


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "100001"])
def test_a_bad_quota_is_a_form_error_and_writes_nothing(client, acme, value):
    response = _client(client, "admin").post("/tenants/acme/quota/", {"gpu_quota": value})
    assert response.status_code == 400
    assert 'class="errorlist' in response.content.decode()
    acme.refresh_from_db()
    assert acme.gpu_quota == 8 and not _audits("tenants.tenant.quota_changed").exists()


def test_a_quota_change_is_audited_with_before_and_after(client, acme):
    c = _client(client, "admin")
    response = c.post("/tenants/acme/quota/", {"gpu_quota": "0"}, follow=True)
    assert "GPU quota of acme is now 0" in response.content.decode()
    event = _audits("tenants.tenant.quota_changed").get()
    assert (event.before, event.after, event.target_id) == ({"gpu_quota": 8}, {"gpu_quota": 0}, str(acme.pk))
    assert event.actor_text.startswith("user") and event.source == "web"
    assert "over quota" in response.content.decode(), "4 held + 2 waiting over a quota of 0"
    c.post("/tenants/acme/quota/", {"gpu_quota": "0"})
    assert _audits("tenants.tenant.quota_changed").count() == 1, "an unchanged quota is not an event"


def test_a_created_token_is_shown_once_and_works(client, acme):
    c = _client(client, "admin")
    response = c.post("/tenants/acme/tokens/", {"name": "deploy"})
    raw = re.search(r'id="new-token-value" readonly value="(gpc_[^"]+)"', response.content.decode()).group(1)
    assert response["Cache-Control"] == "no-store"
    token = api_token_authenticate(raw)
    assert token is not None and token.tenant_id == acme.pk
    assert ApiToken.objects.get(pk=token.pk).name == "deploy"
    assert raw not in c.get("/tenants/acme/").content.decode()
    event = _audits("tenants.apitoken.created").get(target_id=str(token.pk))
    assert event.parent_id == str(acme.pk) and event.source == "web"
    too_long = c.post("/tenants/acme/tokens/", {"name": "x" * 101})
    assert too_long.status_code == 400 and 'class="errorlist' in too_long.content.decode()
    assert acme.api_tokens.count() == 2


def test_revoking_asks_first_then_revokes_and_audits(client, acme):
    c = _client(client, "admin")
    token = acme.api_tokens.get()
    _, raw = api_token_create(actor=TEST_ACTOR, tenant=acme)
    confirm = c.get(f"/tenants/acme/tokens/{token.pk}/revoke/").content.decode()
    assert 'id="revoke-form"' in confirm and "cannot be undone" in confirm
    token.refresh_from_db()
    assert token.revoked_at is None, "the confirmation page changes nothing"
    response = c.post(f"/tenants/acme/tokens/{token.pk}/revoke/", follow=True)
    assert "is revoked" in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None and api_token_authenticate(raw) is not None
    event = _audits("tenants.apitoken.revoked").get()
    assert event.target_id == str(token.pk) and event.parent_id == str(acme.pk)
    c.post(f"/tenants/acme/tokens/{token.pk}/revoke/")
    assert _audits("tenants.apitoken.revoked").count() == 1, "revoking twice is one event"


def test_another_tenants_token_or_an_unknown_tenant_is_404(client, acme):
    other = TenantFactory(name="other")
    token, _ = api_token_create(actor=TEST_ACTOR, tenant=other)
    c = _client(client, "admin")
    assert c.post(f"/tenants/acme/tokens/{token.pk}/revoke/").status_code == 404
    assert c.get("/tenants/nobody/").status_code == 404
    assert c.post("/tenants/nobody/quota/", {"gpu_quota": "3"}).status_code == 404
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None
