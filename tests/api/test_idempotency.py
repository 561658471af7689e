"""Idempotency-Key on POST /api/v1/containers: one lease per key, whatever the retries."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from tenants.idempotency import idempotency_keys_purge
from tenants.models import IdempotencyKey, Lease
from tests.api.conftest import assert_problem, seed_payload
from tests.factories import make_server

pytestmark = pytest.mark.django_db


def test_same_key_and_body_returns_the_original_lease(landon, tasks):
    make_server()
    first = landon.post("/api/v1/containers", seed_payload(), HTTP_IDEMPOTENCY_KEY="k-1")
    again = landon.post("/api/v1/containers", seed_payload(), HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again["Idempotent-Replayed"] == "true"
    assert Lease.objects.count() == 1


def test_key_order_in_the_body_does_not_matter(landon, tasks):
    a = landon.post("/api/v1/containers", raw=b'{"container-url": "nvcr.io/a/b:1", "tenancy": "landon"}',
                    HTTP_IDEMPOTENCY_KEY="k")
    b = landon.post("/api/v1/containers", raw=b'{"tenancy":"landon","container-url":"nvcr.io/a/b:1"}',
                    HTTP_IDEMPOTENCY_KEY="k")
    assert a.json()["id"] == b.json()["id"]


def test_different_body_is_a_422(landon, tasks):
    landon.post("/api/v1/containers", seed_payload(), HTTP_IDEMPOTENCY_KEY="k-2")
    response = landon.post("/api/v1/containers", seed_payload(gpus=2), HTTP_IDEMPOTENCY_KEY="k-2")
    assert_problem(response, 422)
    assert Lease.objects.count() == 1


def test_in_flight_is_a_409_and_a_dead_one_is_taken_over(landon, tasks):
    IdempotencyKey.objects.create(token=landon.token, key="k-3", request_digest=_digest(seed_payload()))
    assert_problem(landon.post("/api/v1/containers", seed_payload(), HTTP_IDEMPOTENCY_KEY="k-3"), 409)
    IdempotencyKey.objects.filter(key="k-3").update(created_at=timezone.now() - timedelta(minutes=5))
    assert landon.post("/api/v1/containers", seed_payload(), HTTP_IDEMPOTENCY_KEY="k-3").status_code == 202
    assert IdempotencyKey.objects.get(key="k-3").lease_id == Lease.objects.get().pk


def _digest(body):
    from tenants.idempotency import request_digest

    return request_digest(body)


def test_keys_are_per_token(callers, tasks):
    a, b = callers["tenant_a"], callers["tenant_b"]
    first = a.post("/api/v1/containers", seed_payload(), HTTP_IDEMPOTENCY_KEY="shared")
    second = b.post("/api/v1/containers", seed_payload(tenancy="other"), HTTP_IDEMPOTENCY_KEY="shared")
    assert first.json()["id"] != second.json()["id"]


def test_a_refused_request_frees_its_key(landon, tasks):
    landon.tenant.gpu_quota = 1
    landon.tenant.save()
    problem = assert_problem(landon.post("/api/v1/containers", seed_payload(gpus=2), HTTP_IDEMPOTENCY_KEY="q"), 409)
    assert problem["code"] == "quota_exceeded" and "quota of 1" in problem["detail"]
    assert not IdempotencyKey.objects.exists()


def test_too_long_key_is_a_400(landon):
    assert_problem(landon.post("/api/v1/containers", seed_payload(), HTTP_IDEMPOTENCY_KEY="k" * 256), 400,
                   field="Idempotency-Key")


def test_keys_are_kept_at_least_a_day(landon, tasks):
    landon.post("/api/v1/containers", seed_payload(), HTTP_IDEMPOTENCY_KEY="old")
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))
    assert idempotency_keys_purge() == 0
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=49))
    assert idempotency_keys_purge() == 1


@pytest.mark.django_db(transaction=True)
def test_32_concurrent_identical_posts_make_exactly_one_lease(callers, tasks):
    landon = callers["tenant_a"]
    make_server()
    barrier, statuses, ids, errors = threading.Barrier(32), [], set(), []

    def client():
        try:
            barrier.wait()
            response = Client().post("/api/v1/containers", seed_payload(), content_type="application/json",
                                     HTTP_AUTHORIZATION=f"Bearer {landon.raw}", HTTP_IDEMPOTENCY_KEY="burst")
            statuses.append(response.status_code)
            if response.status_code == 202:
                ids.add(response.json()["id"])
            else:
                assert response["Content-Type"] == "application/problem+json"
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert Lease.objects.count() == 1 and len(ids) == 1
    assert set(statuses) <= {202, 409} and statuses.count(202) >= 1
