"""Previews: the dry run says what an action does in words, refuses in words, scales its friction to
the blast radius, and its token is refused (with a fresh preview) when anything changed since."""

import pytest
from django.core import signing

from console.audit import Actor
from console.models import AuditEvent, Operation
from fleet import previews
from fleet.models import Server
from fleet.services import gpu_drain, server_cordon
from tests.factories import make_server
from tests.support.demo import hold

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


@pytest.fixture
def busy():
    server = make_server(hostname="srv-0412")
    hold(server, 3, holder="lease/42", owner="acme")  # GPUs 1,3
    hold(server, 10, holder="lease/43", owner="beta")  # GPU 4
    hold(server, 6, holder="lease/44", owner="gamma")  # GPUs 6,8
    return server


def test_drain_summary_names_leases_tenants_and_gpus(busy):
    p = previews.preview(action="server.drain", target_ids=[busy.pk])
    assert p.summary == ("Drain srv-0412: 3 leases of acme, beta, gamma (5 GPUs) keep running; no new leases; "
                         "drained once they end and their GPUs are cleaned")
    assert p.allowed and p.friction == previews.TYPE and p.confirm_text == "srv-0412"
    assert p.api_call.startswith(f"POST /api/v1/servers/{busy.pk}/drain/")
    assert p.impact["owners"] == ["acme", "beta", "gamma"]


def test_friction_follows_the_blast_radius(busy):
    idle = make_server()
    assert previews.preview(action="server.cordon", target_ids=[busy.pk]).friction == previews.UNDO
    assert previews.preview(action="server.drain", target_ids=[idle.pk]).friction == previews.CONFIRM
    assert previews.preview(action="server.drain", target_ids=[busy.pk]).friction == previews.TYPE
    two = previews.preview(action="server.drain", target_ids=[idle.pk, make_server().pk])
    assert two.friction == previews.TYPE and two.confirm_text == "2"
    gpu = idle.gpus.get(module_id=1)
    assert previews.preview(action="gpu.scrub", target_ids=[gpu.pk]).friction == previews.CONFIRM
    assert previews.preview(action="gpu.drain", target_ids=[gpu.pk]).friction == previews.CONFIRM


def test_refusals_are_explained(busy):
    gpu3 = busy.gpus.get(module_id=3)
    p = previews.preview(action="gpu.scrub", target_ids=[gpu3.pk])
    assert p.blockers == ("GPU 3 is in lease 42 (tenant acme): drain it first",)
    with pytest.raises(previews.PreviewBlocked):
        previews.confirm(token=p.token, actor=ACTOR)
    free = busy.gpus.get(module_id=2)
    p = previews.preview(action="gpu.clear_quarantine", target_ids=[free.pk])
    assert p.blockers == ("srv-0412 GPU 2 is free; clearing a quarantine needs it quarantined",)
    server_cordon(server=busy, actor=ACTOR)
    assert previews.preview(action="server.cordon", target_ids=[busy.pk]).blockers == ("srv-0412 is already cordoned",)


def test_a_change_between_preview_and_confirm_is_refused_with_a_fresh_preview(busy):
    p = previews.preview(action="server.drain", target_ids=[busy.pk])
    gpu_drain(gpu=busy.gpus.get(module_id=2), actor=ACTOR)  # someone else acts meanwhile
    with pytest.raises(previews.PreviewChanged) as refused:
        previews.confirm(token=p.token, actor=ACTOR, typed="srv-0412")
    busy.refresh_from_db()
    assert busy.state == "active", "nothing was applied"
    fresh = refused.value.preview
    assert fresh.token != p.token and fresh.target_ids == (busy.pk,)
    previews.confirm(token=fresh.token, actor=ACTOR, typed="srv-0412")
    busy.refresh_from_db()
    assert busy.state == "draining"


def test_the_token_names_its_targets_and_cannot_be_forged(busy):
    other = make_server()
    p = previews.preview(action="server.cordon", target_ids=[busy.pk])
    forged = signing.dumps({"a": "server.cordon", "t": [other.pk], "v": p.version}, salt="other")
    with pytest.raises(previews.PreviewInvalid):
        previews.confirm(token=forged, actor=ACTOR)
    with pytest.raises(previews.PreviewInvalid):
        previews.confirm(token=p.token[:-2] + "xx", actor=ACTOR)
    previews.confirm(token=p.token, actor=ACTOR)
    assert Server.objects.get(pk=other.pk).state == "active"


def test_typed_confirmation_must_match(busy):
    p = previews.preview(action="server.drain", target_ids=[busy.pk])
    with pytest.raises(previews.ConfirmationMismatch):
        previews.confirm(token=p.token, actor=ACTOR, typed="srv-0413")
    busy.refresh_from_db()
    assert busy.state == "active"


def test_every_action_is_audited_with_its_previewed_impact(busy):
    p = previews.preview(action="server.drain", target_ids=[busy.pk])
    outcome = previews.confirm(token=p.token, actor=ACTOR, typed="srv-0412")
    event = AuditEvent.objects.get(verb="fleet.action.server.drain")
    assert event.after["summary"] == p.summary and event.after["impact"] == p.impact
    assert event.after["operation"] == outcome.operation_id
    assert Operation.objects.get(pk=outcome.operation_id).kind == "server.drain"


def test_a_cancelled_drain_leaves_the_server_cordoned(busy):
    p = previews.preview(action="server.drain", target_ids=[busy.pk])
    outcome = previews.confirm(token=p.token, actor=ACTOR, typed="srv-0412")
    cancel = previews.preview(action="server.drain_cancel", target_ids=[busy.pk])
    assert "it stays cordoned" in cancel.summary
    previews.confirm(token=cancel.token, actor=ACTOR)
    busy.refresh_from_db()
    assert busy.state == "cordoned"
    op = Operation.objects.get(pk=outcome.operation_id)
    assert op.status == Operation.Status.CANCELLED and op.done and "stays cordoned" in op.log


def test_undo_of_cordon_is_uncordon(busy):
    outcome = previews.confirm(token=previews.preview(action="server.cordon", target_ids=[busy.pk]).token, actor=ACTOR)
    assert outcome.undo_action == "server.uncordon"
    previews.confirm(token=previews.preview(action=outcome.undo_action, target_ids=[busy.pk]).token, actor=ACTOR)
    busy.refresh_from_db()
    assert busy.state == "active"


def test_gpu_actions_start_their_operations(busy, tasks):
    gpu = busy.gpus.get(module_id=2)
    scrub = previews.confirm(token=previews.preview(action="gpu.scrub", target_ids=[gpu.pk]).token, actor=ACTOR)
    assert Operation.objects.get(pk=scrub.operation_id).kind == "gpu.scrub"
    held = busy.gpus.get(module_id=1)
    previews.confirm(token=previews.preview(action="gpu.drain", target_ids=[held.pk]).token, actor=ACTOR)
    held.refresh_from_db()
    assert held.state == "draining" and held.drain_requested


def test_the_equivalent_api_call_is_a_real_route_or_says_there_is_none(busy):
    assert previews.preview(action="server.cordon", target_ids=[busy.pk]).api_call.startswith(
        f"POST /api/v1/servers/{busy.pk}/cordon/")
    assert previews.preview(action="server.drain_cancel", target_ids=[busy.pk]).api_call == (
        "none: this action is the console's only")
