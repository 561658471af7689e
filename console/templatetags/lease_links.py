"""Template filters of the lease pages: a fleet holder's link to its lease, durations as people read them."""

from django import template
from django.urls import reverse

from tenants.boot_timeline import duration as _duration
from tenants.constants import LEASE_HOLDER

register = template.Library()


@register.filter
def holder_href(holder: str) -> str:
    """`lease/42` → the lease's page; "" for a holder that is not a lease (fleet holders are opaque)."""
    kind, _, ident = (holder or "").partition("/")
    return reverse("lease-detail", args=[int(ident)]) if kind == LEASE_HOLDER and ident.isdigit() else ""


@register.filter
def duration(seconds) -> str:
    return _duration(seconds)
