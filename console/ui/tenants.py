"""The tenants' pages: the list, and one tenant's page with its onboarding, quota, use, leases and
API tokens. Everyone with a console role reads them; only admins change the quota or create and
revoke tokens (the buttons are not rendered for others, and their POSTs are refused with 403).
Thin: reads through tenants.selectors, changes through tenants.services and tenants.tokens."""

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console.audit import Actor
from console.ui.permissions import ADMINISTER, VIEW, require
from tenants import selectors, services
from tenants.models import ApiToken, Tenant
from tenants.tokens import api_token_create, api_token_revoke

SORTS = (("name", "Name"), ("state", "Onboarding"), ("gpus", "GPUs held / quota"), ("running", "Running leases"),
         ("hours", "GPU-hours this month"))


class QuotaForm(forms.Form):
    gpu_quota = forms.IntegerField(
        label="GPU quota", min_value=0, max_value=services.MAX_GPU_QUOTA,
        help_text="Most GPUs the tenant may hold or wait for at once. Lowering it ends no lease: new "
                  "requests are refused until its use falls under it.",
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "style": "width: 6rem"}),
    )


class TokenForm(forms.Form):
    name = forms.CharField(label="What it is for", max_length=100, required=False,
                           widget=forms.TextInput(attrs={"placeholder": "e.g. ci", "size": 16}))


def _quota_bar(tenant: Tenant) -> Tenant:
    """The bar's widths (held, then waiting, in % of the quota; capped to the bar) and whether the
    tenant is over its quota (after an admin lowered it), worked out once here and not in the template."""
    quota = tenant.gpu_quota
    held_pct = min(100, round(100 * tenant.gpus_held / quota)) if quota else (100 if tenant.gpus_held else 0)
    tenant.held_pct = held_pct
    tenant.waiting_pct = min(100 - held_pct, round(100 * tenant.gpus_waiting / quota)) if quota else 0
    tenant.over_quota = tenant.gpus_held + tenant.gpus_waiting > quota
    return tenant


def _actor(request) -> Actor:
    return Actor.for_user(request.user, correlation_id=getattr(request, "correlation_id", ""))


def _tenant(name: str) -> Tenant:
    tenant = Tenant.objects.filter(name=name).first()
    if tenant is None:
        raise Http404("no such tenant")
    return tenant


@require_GET
@require(VIEW)
def tenant_list(request):
    sort = request.GET.get("sort", "name")
    sort = sort if sort in selectors.TENANT_SORTS else "name"
    now = timezone.now()
    return render(request, "console/tenant_list.html", {
        "tenants": [_quota_bar(t) for t in selectors.tenants_overview(now=now, sort=sort)],
        "sort": sort, "sorts": SORTS, "month_start": selectors.month_start(now),
    })


def _render_page(request, name: str, *, status: int = 200, quota_form=None, token_form=None, new_token=None):
    try:
        page = selectors.tenant_page(name, now=timezone.now())
    except Tenant.DoesNotExist as exc:
        raise Http404("no such tenant") from exc
    context = {"p": page, "t": _quota_bar(page.tenant), "new_token": new_token}
    if request.user.has_perm(ADMINISTER):
        context["quota_form"] = quota_form or QuotaForm(initial={"gpu_quota": page.tenant.gpu_quota})
        context["token_form"] = token_form or TokenForm()
    response = render(request, "console/tenant_detail.html", context, status=status)
    if new_token:
        response["Cache-Control"] = "no-store"  # the secret is in this page, and in no other
    return response


@require_GET
@require(VIEW)
def tenant_page(request, name: str):
    return _render_page(request, name)


@require_POST
@require(ADMINISTER)
def tenant_quota(request, name: str):
    tenant = _tenant(name)
    form = QuotaForm(request.POST)
    if form.is_valid():
        try:
            services.tenant_set_quota(tenant=tenant, actor=_actor(request), gpu_quota=form.cleaned_data["gpu_quota"])
        except ValidationError as exc:
            form.add_error(None, exc)
    if not form.is_valid():
        return _render_page(request, name, status=400, quota_form=form)
    messages.success(request, f"GPU quota of {tenant.name} is now {form.cleaned_data['gpu_quota']}.")
    return redirect("tenant-detail", name=tenant.name)


@require_POST
@require(ADMINISTER)
def tenant_token_create(request, name: str):
    tenant = _tenant(name)
    form = TokenForm(request.POST)
    if not form.is_valid():
        return _render_page(request, name, status=400, token_form=form)
    token, raw = api_token_create(actor=_actor(request), tenant=tenant, name=form.cleaned_data["name"])
    # Shown in this response only (not stored, not put in the session): a reload does not show it again.
    return _render_page(request, name, new_token={"token": token, "raw": raw})


@require_http_methods(["GET", "POST"])
@require(ADMINISTER)
def tenant_token_revoke(request, name: str, token_id: int):
    """GET: the confirmation (a page, so it works without JavaScript); POST: revoke."""
    tenant = _tenant(name)
    token = ApiToken.objects.filter(pk=token_id, tenant=tenant).first()
    if token is None:
        raise Http404("no such token of this tenant")
    if request.method == "GET":
        return render(request, "console/token_revoke.html", {"t": tenant, "token": token})
    if token.is_active:
        api_token_revoke(token=token, actor=_actor(request))
        messages.success(request, f"Token {token.prefix}… of {tenant.name} is revoked: requests with it are refused.")
    return redirect("tenant-detail", name=tenant.name)
