"""API test set-up: principals (anonymous, tenants A and B, viewer, support, admin) and their clients."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.test import Client

from tenants.states import TenantState
from tenants.tokens import api_token_create
from tests.factories import TenantFactory
from tests.factories.fleet import TEST_ACTOR

SEED_IMAGE = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"
PROBLEM = "application/problem+json"


@dataclass
class Caller:
    name: str
    client: Client
    tenant: object = None
    token: object = None

    def _headers(self, headers):
        return {**({"HTTP_AUTHORIZATION": f"Bearer {self.raw}"} if self.raw else {}), **(headers or {})}

    raw: str = ""

    def get(self, path, data=None, **headers):
        return self.client.get(path, data, **self._headers(headers))

    def post(self, path, body=None, *, raw: bytes | None = None, **headers):
        payload = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.client.generic("POST", path, payload, content_type="application/json", **self._headers(headers))

    def delete(self, path, **headers):
        return self.client.delete(path, **self._headers(headers))

    def call(self, method, path, body=None):
        if method == "GET":
            return self.get(path)
        if method == "DELETE":
            return self.delete(path)
        return self.post(path, body)


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()
    yield
    cache.clear()


def _operator(role: str) -> Caller:
    user = get_user_model().objects.create(username=f"op-{role}")  # no password: no hasher in set-up
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    token, raw = api_token_create(actor=TEST_ACTOR, user=user, name=role)
    return Caller(name=role, client=Client(), token=token, raw=raw)


def _tenant(name: str) -> Caller:
    tenant = TenantFactory(name=name, state=TenantState.READY, gpu_quota=64)
    token, raw = api_token_create(actor=TEST_ACTOR, tenant=tenant, name="ci")
    return Caller(name=name, client=Client(), tenant=tenant, token=token, raw=raw)


@pytest.fixture
def callers(db):
    """Every principal of the permission matrix."""
    return {
        "anonymous": Caller(name="anonymous", client=Client()),
        "tenant_a": _tenant("landon"),
        "tenant_b": _tenant("other"),
        "viewer": _operator("viewer"),
        "support": _operator("support"),
        "admin": _operator("admin"),
    }


@pytest.fixture
def landon(callers):
    return callers["tenant_a"]


def seed_payload(**extra):
    return {"container-url": SEED_IMAGE, "tenancy": "landon", **extra}


def assert_problem(response, status: int, *, field: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith(PROBLEM), response["Content-Type"]
    body = response.json()
    assert body["status"] == status and body["code"] and body["title"] and "errors" in body
    if field is not None:
        named = {e["field"] for e in body["errors"]}
        assert any(n == field or n.startswith((f"{field}.", f"{field}[")) for n in named), body["errors"]
    return body
