"""API tokens: SHA-256 digest with a lookup prefix, shown once, revocable, last_used_at at most once a
minute, no password hasher on the request path; the management command and the admin."""

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import hashers
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from tenants.models import ApiToken, Tenant
from tests.api.conftest import assert_problem, seed_payload
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


def _cmd(*args):
    out = StringIO()
    call_command("apitoken", *args, stdout=out)
    return out.getvalue().strip()


def test_command_creates_a_token_shown_once_and_stored_as_a_digest(tasks):
    raw = _cmd("create", "--tenant", "landon", "--open-account", "--name", "ci")
    token = ApiToken.objects.get()
    assert raw.startswith(f"gpc_{token.prefix}_") and raw not in token.digest and len(token.digest) == 64
    assert Tenant.objects.get(name="landon").state == "pending"
    response = Client().post("/api/v1/containers", seed_payload(), content_type="application/json",
                             HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 202
    assert token.prefix in _cmd("list") and raw not in _cmd("list")


def test_command_refuses_an_unknown_tenant_without_open_account():
    with pytest.raises(CommandError):
        _cmd("create", "--tenant", "ghost")
    assert not Tenant.objects.exists()


def test_operator_token_needs_a_console_role(django_user_model):
    django_user_model.objects.create(username="norole")
    with pytest.raises(CommandError):
        _cmd("create", "--user", "norole")


def test_revoked_token_is_refused(tasks):
    TenantFactory(name="landon", state="ready")
    raw = _cmd("create", "--tenant", "landon")
    prefix = ApiToken.objects.get().prefix
    assert _cmd("revoke", prefix) == f"revoked {prefix}"
    assert_problem(Client().get("/api/v1/leases", HTTP_AUTHORIZATION=f"Bearer {raw}"), 401)


def test_a_wrong_secret_with_a_right_prefix_is_refused(landon):
    forged = landon.raw[:-4] + "AAAA"
    assert_problem(Client().get("/api/v1/leases", HTTP_AUTHORIZATION=f"Bearer {forged}"), 401)


def test_last_used_at_is_written_at_most_once_a_minute(landon):
    landon.get("/api/v1/leases")
    first = ApiToken.objects.get(pk=landon.token.pk).last_used_at
    landon.get("/api/v1/leases")
    assert ApiToken.objects.get(pk=landon.token.pk).last_used_at == first
    ApiToken.objects.filter(pk=landon.token.pk).update(last_used_at=timezone.now() - timedelta(seconds=61))
    landon.get("/api/v1/leases")
    assert ApiToken.objects.get(pk=landon.token.pk).last_used_at > first


def test_no_password_hasher_on_the_request_path(landon, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a password hasher ran")

    monkeypatch.setattr(hashers, "check_password", forbidden)
    monkeypatch.setattr(hashers, "make_password", forbidden)
    assert landon.get("/api/v1/leases").status_code == 200


def test_admin_creates_a_token_and_shows_it_once(admin_client):
    TenantFactory(name="landon")
    tenant = Tenant.objects.get(name="landon")
    response = admin_client.post("/admin/tenants/apitoken/add/", {"tenant": tenant.pk, "name": "from-admin"},
                                 follow=True)
    assert response.status_code == 200
    token = ApiToken.objects.get()
    shown = [str(m) for m in response.context["messages"]]
    assert any(f"gpc_{token.prefix}_" in m for m in shown)
    admin_client.post("/admin/tenants/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    assert ApiToken.objects.get().revoked_at is not None


def test_a_token_has_exactly_one_principal(admin_client):
    response = admin_client.post("/admin/tenants/apitoken/add/", {"name": "nobody"})
    assert response.status_code == 200 and not ApiToken.objects.exists()


def test_admin_opens_a_tenant_account_audited_and_without_a_tenancy(admin_client, tasks):
    from console.models import AuditEvent

    response = admin_client.post("/admin/tenants/tenant/add/", {"name": "acme", "display_name": "Acme",
                                                                "gpu_quota": 8})
    assert response.status_code == 302
    assert Tenant.objects.get(name="acme").state == "pending" and tasks.queued == []
    assert AuditEvent.objects.filter(verb="tenants.tenant.created", target_repr="acme").exists()
