"""Idempotent creates: an `Idempotency-Key` per token names one lease, whatever the retries.

The key is claimed first, in its own committed transaction (a row with no lease: "in flight"); the
lease is then recorded and bound to the key in one transaction (`lease_request(on_record=...)`), so a
lease never exists without its key nor a finished key without its lease. A retry with the same key
and body gets the original lease; with another body, KeyReused (422); while the first is still in
flight, KeyInFlight (409). A request that failed (bad input, quota) frees its key. A key held by a
request that never finished (its worker died) is taken over after IDEMPOTENCY_IN_FLIGHT_STALE.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.utils import timezone

from console.errors import Conflict, DomainError
from tenants.constants import IDEMPOTENCY_IN_FLIGHT_STALE, IDEMPOTENCY_TTL
from tenants.models import ApiToken, IdempotencyKey, Lease


class KeyInFlight(Conflict):
    """The first request with this key is still being processed (HTTP 409)."""

    code = "idempotency_key_in_flight"


class KeyReused(DomainError):
    """The key was used with a different request body (HTTP 422)."""

    status_code = 422
    code = "idempotency_key_reused"


def request_digest(payload: dict) -> str:
    """A digest of the request body as parsed (key order and whitespace do not matter)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def lease_request_once(
    *, token: ApiToken, key: str, digest: str, create: Callable[..., Lease]
) -> tuple[Lease, bool]:
    """`create(on_record=...)` at most once per (token, key). Returns (lease, replayed)."""
    while True:
        try:
            claim = _claim(token=token, key=key, digest=digest)
            break
        except IntegrityError:
            held = IdempotencyKey.objects.filter(token=token, key=key).select_related("lease").first()
            if held is None:
                continue  # freed meanwhile: claim it
            if held.request_digest != digest:
                raise KeyReused("this Idempotency-Key was used with a different request body") from None
            if held.lease is not None:
                return held.lease, True
            if timezone.now() - held.created_at < IDEMPOTENCY_IN_FLIGHT_STALE:
                raise KeyInFlight("a request with this Idempotency-Key is still in flight; retry later") from None
            IdempotencyKey.objects.filter(pk=held.pk, lease__isnull=True).delete()  # its worker died

    def bind(lease: Lease) -> None:
        IdempotencyKey.objects.filter(pk=claim.pk).update(lease=lease)

    try:
        return create(on_record=bind), False
    except BaseException:
        IdempotencyKey.objects.filter(pk=claim.pk, lease__isnull=True).delete()
        raise


def _claim(*, token: ApiToken, key: str, digest: str) -> IdempotencyKey:
    """One INSERT, committed on its own: in autocommit mode it needs no BEGIN and COMMIT of its own
    (two round trips of every create); inside a caller's transaction, a savepoint keeps that
    transaction usable when the key is taken."""
    if transaction.get_connection().in_atomic_block:
        with transaction.atomic():
            return IdempotencyKey.objects.create(token=token, key=key, request_digest=digest)
    return IdempotencyKey.objects.create(token=token, key=key, request_digest=digest)


def idempotency_keys_purge(*, now=None) -> int:
    """Forget keys older than IDEMPOTENCY_TTL (the reconciler calls it). Returns how many."""
    cutoff = (now or timezone.now()) - IDEMPOTENCY_TTL
    return IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()[0]
