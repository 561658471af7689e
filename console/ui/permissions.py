"""Who may do what in the operator UI: every view and consumer checks here, on the server.

Roles are groups (console/roles.py): viewer reads, support also acts, admin administers. Templates
read the same permissions (`perms.console.operate_fleet`) so a button a user may not press is not
rendered; the view refuses it (403) all the same.
"""

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

from console.roles import ADMINISTER, OPERATE, VIEW

__all__ = ["ADMINISTER", "OPERATE", "VIEW", "can_view", "require"]


def can_view(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.has_perm(VIEW))


def require(permission: str):
    """Login required (anonymous → the login page), then `permission` (else 403)."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not request.user.has_perm(permission):
                raise PermissionDenied(f"needs {permission}")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
