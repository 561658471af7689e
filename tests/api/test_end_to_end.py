"""The seed's exact payload, through the API, reaches `running` on the simulated fleet, then is deleted
and cleaned (scrub, level) to `released`."""

import json

import pytest
from django.test import Client

from tenants.models import Lease, Tenant
from tenants.states import TenantState
from tenants.tokens import api_token_create
from tests.factories.fleet import TEST_ACTOR
from tests.tenants.conftest import sim  # noqa: F401 (the fixture)

SEED = b"""{
  "container-url": "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8",
  "tenancy": "landon"
}"""


@pytest.mark.slow
def test_seed_payload_runs_and_is_released(sim, tasks):  # noqa: F811
    tenant = Tenant.objects.create(name="landon", display_name="Landon")  # opened by an admin: pending
    _, raw = api_token_create(actor=TEST_ACTOR, tenant=tenant)
    client, auth = Client(), {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    created = client.post("/api/v1/containers", SEED, content_type="application/json", **auth)
    assert created.status_code == 202 and created.json()["state"] == "pending"  # its tenancy is made first
    lease_id = created.json()["id"]
    tasks.run()
    body = client.get(f"/api/v1/leases/{lease_id}", **auth).json()
    assert body["state"] == "running", json.dumps(body)[:400]
    assert Tenant.objects.get(pk=tenant.pk).state == TenantState.READY
    assert body["boot_phases"] and all(p["ended_at"] for p in body["boot_phases"])
    assert body["server"]["hostname"] and len(body["gpu_devices"]) == 1 and body["running_at"]
    tenancy = client.get("/api/v1/tenancies/landon", **auth).json()
    assert tenancy["state"] == "ready" and tenancy["namespace"] == "tenant-landon" and tenancy["gpus_held"] == 1
    assert client.delete(f"/api/v1/leases/{lease_id}", **auth).status_code == 202
    tasks.run()
    final = client.get(f"/api/v1/leases/{lease_id}", **auth).json()
    assert final["state"] == "released" and final["terminal"] and Lease.objects.get().released_at
