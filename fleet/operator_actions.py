"""The operator API's view of `fleet.previews`: one target per call, actions named as in the URL.

The console's pages and the API show the same preview (summary, blockers) and confirm with the same
signed token, so a confirmation is refused the same way whichever way it came: a change since the
preview is a 409 carrying the fresh preview. The API's caller confirms by sending the token back
(there is no typing to ask of a program), and gets the action's Operation (an instant action, such
as a cordon, gets one recorded as done).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from django.db import transaction

from console.audit import Actor
from console.errors import Conflict, DomainError
from console.models import Operation
from console.operations import operation_finish, operation_start
from fleet import previews
from fleet.models import Gpu, Server

ACTIONS = previews.API_ACTIONS  # URL action → fleet.previews action, per target type


class UnknownAction(DomainError):
    status_code = 404
    code = "unknown_action"


@dataclass(frozen=True)
class Preview:
    """A preview as the API shows it."""

    action: str
    target_type: str
    target_id: int
    target: str
    summary: str
    effects: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    token: str = ""

    @property
    def allowed(self) -> bool:
        return not self.blockers

    def as_dict(self) -> dict:
        return {**asdict(self), "allowed": self.allowed}


class StalePreview(Conflict):
    """The target changed since the preview, or the token is not this action's on this target: the
    problem carries the fresh preview to confirm instead."""

    def __init__(self, message: str, preview: Preview):
        super().__init__(message)
        self.preview = preview
        self.problem_extra = {"preview": preview.as_dict()}


class ActionBlocked(Conflict):
    """The action cannot run on the target as it is (see the preview's blockers)."""


def actions_for(target_type: str) -> tuple[str, ...]:
    return tuple(ACTIONS.get(target_type, ()))


def preview_action(*, action: str, target) -> Preview:
    """What `action` on `target` would do now, what blocks it, and the token that confirms it."""
    target_type, name = _resolve(action, target)
    return _shown(previews.preview(action=name, target_ids=[target.pk]), action, target_type, target)


def action_run(*, action: str, target, token: str, actor: Actor) -> Operation:
    """Confirm and run an operator action with its preview's token; returns its Operation."""
    target_type, name = _resolve(action, target)
    fresh = previews.preview(action=name, target_ids=[target.pk])
    try:
        signed_action, signed_ids, _ = previews.read_token(token)
    except previews.PreviewInvalid:
        signed_action, signed_ids = "", []
    if (signed_action, list(signed_ids)) != (name, [target.pk]):
        raise StalePreview(f"the token is not a preview of {action} on {target}: confirm this preview",
                           _shown(fresh, action, target_type, target))
    try:
        outcome = previews.confirm(token=token, actor=actor, typed=fresh.confirm_text)
    except previews.PreviewChanged as exc:
        raise StalePreview(f"{target} changed since the preview: confirm the fresh one",
                           _shown(exc.preview, action, target_type, target)) from exc
    except previews.PreviewBlocked as exc:
        raise ActionBlocked("; ".join(exc.preview.blockers)) from exc
    if outcome.operation_id is not None:
        return Operation.objects.get(pk=outcome.operation_id)
    with transaction.atomic():
        op = operation_start(kind=f"{target_type}.{action}", target=target, actor=actor, line=outcome.message)
    operation_finish(op.pk, ok=True, line=f"{action} done")
    op.refresh_from_db()
    return op


def _resolve(action: str, target) -> tuple[str, str]:
    target_type = "server" if isinstance(target, Server) else "gpu" if isinstance(target, Gpu) else ""
    name = ACTIONS.get(target_type, {}).get(action)
    if name is None:
        raise UnknownAction(f"no action {action!r} on a {target_type or type(target).__name__}; "
                            f"one of {', '.join(actions_for(target_type))}")
    return target_type, name


def _shown(p: previews.Preview, action: str, target_type: str, target) -> Preview:
    return Preview(action=action, target_type=target_type, target_id=target.pk, target=str(target),
                   summary=p.summary, blockers=list(p.blockers), token=p.token)
