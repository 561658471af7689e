"""Support actions: a dry-run preview, then a confirmation that carries its signed token.

The logic is fleet.previews' (the REST API uses the same); these views render it. With htmx the
preview opens in the page's dialog and the outcome replaces it; without JavaScript both are pages.
"""

from django.http import HttpResponseBadRequest
from django.shortcuts import render
from django.views.decorators.http import require_POST

from console.audit import Actor
from console.ui.permissions import OPERATE, require
from fleet import previews

FRICTION_HINT = {
    previews.UNDO: "Applies at once; you can undo it for 10 seconds.",
    previews.CONFIRM: "Check the impact, then confirm.",
    previews.TYPE: "This touches more than one tenant or server, or clears a safety hold: type to confirm.",
}


def _render_preview(request, p, *, status=200, notice=""):
    template = "console/action_dialog.html" if request.htmx else "console/action_page.html"
    return render(request, template, {"p": p, "hint": FRICTION_HINT[p.friction], "notice": notice}, status=status)


def _target_ids(request) -> list[int]:
    raw = request.POST.getlist("target_ids") or [request.POST.get("target_id", "")]
    return [int(x) for value in raw for x in value.split(",") if x.strip().isdigit()]


@require_POST
@require(OPERATE)
def action_preview(request, action: str):
    try:
        p = previews.preview(action=action, target_ids=_target_ids(request))
    except previews.PreviewInvalid as exc:
        return HttpResponseBadRequest(str(exc))
    if p.friction == previews.UNDO and p.allowed and request.POST.get("immediate"):
        return _confirm(request, p.token, "")
    return _render_preview(request, p)


@require_POST
@require(OPERATE)
def action_confirm(request):
    return _confirm(request, request.POST.get("token", ""), request.POST.get("typed", ""))


def _confirm(request, token: str, typed: str):
    actor = Actor.for_user(request.user, correlation_id=getattr(request, "correlation_id", ""))
    try:
        outcome = previews.confirm(token=token, actor=actor, typed=typed)
    except previews.PreviewInvalid as exc:
        return HttpResponseBadRequest(str(exc))
    except previews.PreviewChanged as exc:
        return _render_preview(request, exc.preview, status=409,
                               notice="Something changed since the preview: this is the new one. Nothing was done.")
    except previews.PreviewBlocked as exc:
        return _render_preview(request, exc.preview, status=409, notice="Refused: nothing was done.")
    except previews.ConfirmationMismatch as exc:
        p = previews.preview(action=previews.read_token(token)[0], target_ids=previews.read_token(token)[1])
        return _render_preview(request, p, status=400, notice=f"Not confirmed: {exc}.")
    undo = None
    if outcome.undo_action:
        undo = previews.preview(action=outcome.undo_action, target_ids=list(outcome.target_ids))
    template = "console/action_done.html" if request.htmx else "console/action_done_page.html"
    return render(request, template, {"outcome": outcome, "undo": undo})
