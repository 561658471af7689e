"""API tokens: create (the secret shown once), revoke, and authenticate a presented token.

A token reads `gpc_<prefix>_<secret>`. The prefix (random, public) finds the row by a unique index;
the stored SHA-256 digest of the whole token is compared in constant time. SHA-256 and not a
password hasher: the secret is 256 random bits, so a slow hash adds nothing but latency on every
request. `last_used_at` is written at most once a minute per token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from console.audit import Actor, audit_record
from console.db import from_db
from tenants.constants import CONSOLE_ROLES
from tenants.models import ApiToken, Tenant

TOKEN_SCHEME = "gpc"
PREFIX_BYTES = 6  # 8 url-safe characters
SECRET_BYTES = 32
LAST_USED_EVERY = timedelta(minutes=1)


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_create(
    *, actor: Actor, tenant: Tenant | None = None, user=None, name: str = ""
) -> tuple[ApiToken, str]:
    """A new token for one tenant or one operator (a user with a console role); returns the row and
    the token itself, which is not stored and cannot be shown again."""
    if (tenant is None) == (user is None):
        raise ValidationError("a token belongs to exactly one tenant or one operator")
    if user is not None and not (user.is_superuser or user.groups.filter(name__in=CONSOLE_ROLES).exists()):
        raise ValidationError({"user": f"{user} has no console role ({', '.join(CONSOLE_ROLES)})"})
    prefix = secrets.token_urlsafe(PREFIX_BYTES).replace("_", "x").replace("-", "y")
    raw = f"{TOKEN_SCHEME}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    token = ApiToken(tenant=tenant, user=user, name=name[:100], prefix=prefix, digest=_digest(raw),
                     created_by=actor.name)
    token.full_clean()
    with transaction.atomic():
        token.save()
        audit_record(actor=actor, verb="tenants.apitoken.created", target=token,
                     parent=tenant, message=f"token {prefix} {name}".strip())
    return token, raw


def api_token_revoke(*, token: ApiToken, actor: Actor) -> ApiToken:
    """Revoke a token (idempotent); requests with it are refused from now on."""
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().get(pk=token.pk)
        if token.revoked_at is not None:
            return token
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(actor=actor, verb="tenants.apitoken.revoked", target=token, message=f"token {token.prefix}",
                     parent=token.tenant if token.tenant_id else None)
    return token


def api_token_authenticate(raw: str) -> ApiToken | None:
    """The active token this string is, or None. One indexed read; a write at most once a minute."""
    scheme, _, rest = raw.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != TOKEN_SCHEME or not prefix or not secret or len(raw) > 200:
        return None
    token = _token_by_prefix(prefix)
    if token is None or not hmac.compare_digest(token.digest, _digest(raw)) or token.revoked_at is not None:
        return None
    if token.user_id is not None:
        token.user = get_user_model().objects.get(pk=token.user_id)
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


_TOKEN_COLUMNS = ("id", "prefix", "digest", "revoked_at", "last_used_at", "tenant_id", "user_id")
_TENANT_COLUMNS = tuple(f.column for f in Tenant._meta.concrete_fields)
_TOKEN_BY_PREFIX = (
    "SELECT " + ", ".join(f"k.{c}" for c in _TOKEN_COLUMNS) + ", " + ", ".join(f"t.{c}" for c in _TENANT_COLUMNS)
    + f" FROM {ApiToken._meta.db_table} k LEFT JOIN {Tenant._meta.db_table} t ON t.id = k.tenant_id"
    + " WHERE k.prefix = %s"
)


def _token_by_prefix(prefix: str) -> ApiToken | None:
    """The token with its tenant in one statement written out: it runs on every request, and the ORM
    spent longer building it than the database did answering it (bench/api.py)."""
    with connection.cursor() as cursor:
        cursor.execute(_TOKEN_BY_PREFIX, [prefix])
        row = cursor.fetchone()
    if row is None:
        return None
    n = len(_TOKEN_COLUMNS)
    token = _instance(ApiToken, [ApiToken._meta.get_field(c.removesuffix("_id")) for c in _TOKEN_COLUMNS], row[:n])
    if token.tenant_id is not None:
        token.tenant = _instance(Tenant, Tenant._meta.concrete_fields, row[n:])
    return token


def _instance(model, fields, values):
    """A model instance from raw column values, converted as the ORM would (datetimes on SQLite)."""
    return model(**{field.attname: value for field, value in zip(fields, from_db(fields, values), strict=True)})
