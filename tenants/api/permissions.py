"""Who may call what: tenants (their token, their tenancy only) and operators (console roles).

Roles are the auth groups `viewer` < `support` < `admin` (a superuser is an admin). An operator
authenticates by session or by an operator token.
"""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from tenants.api.authentication import TenantPrincipal
from tenants.constants import CONSOLE_ROLES, ROLE_ADMIN, ROLE_SUPPORT, ROLE_VIEWER
from tenants.models import Tenant

_RANK = {role: i for i, role in enumerate(CONSOLE_ROLES)}


def caller_tenant(request) -> Tenant | None:
    """The tenant a request acts for (a tenant's token), else None."""
    user = getattr(request, "user", None)
    return user.tenant if isinstance(user, TenantPrincipal) else None


def caller_role(request) -> str | None:
    """The operator's highest console role, or None (tenants, anonymous, users without a role)."""
    cached = getattr(request, "_console_role", False)
    if cached is not False:
        return cached
    user = getattr(request, "user", None)
    role = None
    if user is not None and user.is_authenticated and not isinstance(user, TenantPrincipal):
        if user.is_superuser:
            role = ROLE_ADMIN
        else:
            names = set(user.groups.filter(name__in=CONSOLE_ROLES).values_list("name", flat=True))
            role = max(names, key=_RANK.__getitem__, default=None)
    request._console_role = role
    return role


def has_role(request, minimum: str) -> bool:
    role = caller_role(request)
    return role is not None and _RANK[role] >= _RANK[minimum]


class IsTenant(BasePermission):
    """A tenant's token."""

    message = "Only a tenant's token may do this."

    def has_permission(self, request, view):
        return caller_tenant(request) is not None


class IsOperator(BasePermission):
    """An operator with at least `view.required_role` (reads: viewer; actions: support)."""

    message = "This needs a console role."

    def has_permission(self, request, view):
        minimum = getattr(view, "required_role", ROLE_VIEWER)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            minimum = getattr(view, "required_write_role", ROLE_SUPPORT)
        return has_role(request, minimum)


class IsTenantOrOperator(BasePermission):
    """A tenant (its own objects, scoped by the view's queryset) or an operator: reads need viewer,
    writes support."""

    message = "Only a tenant's token or an operator may do this."

    def has_permission(self, request, view):
        if caller_tenant(request) is not None:
            return True
        return has_role(request, ROLE_VIEWER if request.method in ("GET", "HEAD", "OPTIONS") else ROLE_SUPPORT)
