"""Bearer-token authentication and the principal a tenant's token acts as."""

from __future__ import annotations

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from tenants.models import ApiToken, Tenant
from tenants.tokens import api_token_authenticate


@dataclass(frozen=True)
class TenantPrincipal:
    """`request.user` for a tenant's token: no Django user, only the tenant (and the token)."""

    tenant: Tenant
    token: ApiToken
    is_authenticated: bool = True
    is_active: bool = True
    is_anonymous: bool = False
    is_staff: bool = False
    is_superuser: bool = False
    pk: None = None

    def get_username(self) -> str:
        return f"tenant:{self.tenant.name}/token:{self.token.prefix}"


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer gpc_<prefix>_<secret>`; a tenant's token or an operator's."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        token = api_token_authenticate(raw.strip())
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        if token.tenant_id:
            return TenantPrincipal(tenant=token.tenant, token=token), token
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token's user is inactive.")
        return token.user, token

    def authenticate_header(self, request):
        return f'{self.keyword} realm="api"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = ApiTokenAuthentication
    name = "bearerToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "gpc_<prefix>_<secret>",
                "description": "A tenant's or an operator's API token (`manage.py apitoken create`)."}
