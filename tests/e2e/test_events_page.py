"""The events page in Chromium: a viewer filters with the plain GET form, a new matching event appears
at the top without a reload, a non-matching one does not; a screenshot for the README."""

from pathlib import Path

import pytest
from django.conf import settings

from console.audit import Actor
from fleet.models import Server
from fleet.services import server_cordon, server_uncordon
from tests.e2e.conftest import login, low_contrast_text
from tests.factories import make_server, make_user
from tests.support.demo import lived_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anydb, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(settings.BASE_DIR) / "docs" / "screenshots"


def test_new_events_appear_at_the_top_of_a_filtered_page(new_page, expect):
    servers = [make_server(rack="r01", slot=i + 1, hostname=f"gpu-{i + 1:04d}") for i in range(6)]
    lived_in(servers)
    make_user("viewer", username="vic", password="right-password")
    page = login(new_page(viewport=(1280, 820)), "vic")
    page.click("nav >> text=Events")
    expect(page.locator("#live-badge")).to_have_text("Live")
    page.fill("#id_verb", "fleet.server.")
    page.click("form.event-filters button[type=submit]")
    page.wait_for_url("**/events/?*verb=fleet.server.*")
    expect(page.locator("#live-badge")).to_have_text("Live")
    page.evaluate("window.__sameDocument = true")
    before = page.locator("#events-rows tr").count()

    server_cordon(server=Server.objects.get(pk=servers[1].pk), actor=Actor.system("e2e"))
    top = page.locator("#events-rows tr").first
    expect(top).to_contain_text("fleet.server.cordoned")
    expect(top).to_contain_text("gpu-0002")
    expect(top).to_have_class("fresh")
    assert page.locator("#events-rows tr").count() == before + 1
    assert page.evaluate("window.__sameDocument") is True, "added without a reload"
    expect(page.locator("#events-announce")).to_have_text("1 new event")

    server_uncordon(server=Server.objects.get(pk=servers[1].pk), actor=Actor.system("e2e"))
    expect(page.locator("#events-rows tr").first).to_contain_text("fleet.server.active")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto("/events/")
    expect(page.locator("#live-badge")).to_have_text("Live")
    page.screenshot(path=str(SCREENSHOTS / "events-page.png"))
    assert low_contrast_text(page) == []
    page.goto("/events/?target_id=x")
    assert page.locator(".field-error").count() >= 1
    assert [p for p in page.problems if "400" not in p] == []
