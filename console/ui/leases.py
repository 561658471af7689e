"""The lease pages: the recent leases, one lease with its boot timeline, and Release (support and
admin). Thin: they read through tenants.lease_view and call tenants' release service; the lease's
page parts are template partials the websocket consumer (LeaseConsumer) renders again."""

from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

from console.audit import Actor
from console.statemachine import InvalidTransition
from console.ui.permissions import OPERATE, VIEW, require
from console.ui.views import render_page_or_part
from tenants import services
from tenants.lease_view import lease_page, leases_for_list, release_refusal
from tenants.models import Lease
from tenants.selectors import lease_detail
from tenants.states import LeaseState

LEASE_PARTS = ("lease-header", "lease-timeline", "lease-facts", "lease-history")


@require_GET
@require(VIEW)
def lease_list(request):
    state = request.GET.get("state", "")
    if state not in LeaseState.values:
        state = ""
    return render(request, "console/lease_list.html", {
        "leases": leases_for_list(state=state), "state": state, "states": LeaseState.choices,
    })


@require_GET
@require(VIEW)
def lease_detail_page(request, pk: int):
    try:
        page = lease_page(pk)
    except Lease.DoesNotExist as exc:
        raise Http404("no such lease") from exc
    return render_page_or_part(request, "console/lease_detail.html", LEASE_PARTS, {"d": page})


@require_http_methods(["GET", "POST"])
@require(OPERATE)
def lease_release_view(request, pk: int):
    """GET: what releasing would do, with a Confirm button. POST: release, as the operator. A lease
    that cannot be released now is explained (409), never an error page."""
    try:
        lease = lease_detail(pk)
    except Lease.DoesNotExist as exc:
        raise Http404("no such lease") from exc
    template = "console/lease_release.html#release-dialog" if request.htmx else "console/lease_release.html"
    refusal = release_refusal(lease)
    if request.method == "GET" or refusal:
        return render(request, template, {"lease": lease, "refusal": refusal, "stage": "confirm"},
                      status=409 if refusal and request.method == "POST" else 200)
    actor = Actor.for_user(request.user, correlation_id=getattr(request, "correlation_id", ""))
    try:
        lease = services.lease_release(lease=lease, actor=actor)
    except InvalidTransition:  # it moved on between the check and the lock (a race with the pod ending)
        lease.refresh_from_db()
        refusal = release_refusal(lease) or f"Lease {lease.pk} changed meanwhile ({lease.state}): nothing was done."
        return render(request, template, {"lease": lease, "refusal": refusal, "stage": "confirm"}, status=409)
    return render(request, template, {"lease": lease, "stage": "done"})
