"""The live console in Chromium: two browsers see each other's drain, a socket that comes back
repairs every cell, a drain by keyboard alone, a viewer sees no buttons; screenshots for the README."""

from pathlib import Path

import pytest
from django.conf import settings

from console.audit import Actor
from fleet.models import Gpu, Server
from fleet.overview import STATE_CODE
from fleet.services import gpu_drain, gpu_quarantine
from tests.e2e.conftest import login, low_contrast_text
from tests.factories import make_server, make_user
from tests.support.demo import hold, lived_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anydb, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("e2e")
SCREENSHOTS = Path(settings.BASE_DIR) / "docs" / "screenshots"


def _cells_match_database(page, servers):
    """Every cell's class on the page is its GPU's state in the database."""
    shown = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#fleet-map .t')].map(
        t => [t.id.slice(7), [...t.querySelectorAll('i')].map(c => c.classList[0])]))""")
    expected = {
        str(s.pk): [STATE_CODE[state] for state in Gpu.objects.filter(server=s).order_by("module_id")
                    .values_list("state", flat=True)]
        for s in servers
    }
    return shown == expected, shown, expected


def test_two_browsers_see_each_others_drain(new_page, expect):
    server = make_server(hostname="srv-0412")
    hold(server, 3, holder="lease/42", owner="acme")
    hold(server, 10, holder="lease/43", owner="beta")
    make_user("support", username="ana", password="right-password")
    make_user("viewer", username="vic", password="right-password")
    actor = login(new_page(), "ana")
    watcher = login(new_page(), "vic")
    expect(watcher.locator("#live-badge")).to_have_text("Live")
    watcher.evaluate("window.__sameDocument = true")

    actor.goto(f"/servers/{server.pk}/")
    actor.click("button[data-action='server.drain']")
    dialog = actor.locator("#action-dialog")
    expect(dialog).to_contain_text("Drain srv-0412: 2 leases of acme, beta (3 GPUs) keep running; no new leases")
    dialog.locator("input[name=typed]").fill("srv-0412")
    dialog.locator("button[type=submit]").click()
    expect(dialog).to_contain_text("Drain started: srv-0412")
    expect(actor.locator(f"#server-{server.pk}-operations")).to_contain_text("server.drain")

    tile = watcher.locator(f"#server-{server.pk}")
    expect(tile).to_have_class("t s-draining")
    expect(tile.locator(".ss")).to_contain_text("draining")
    assert watcher.evaluate("window.__sameDocument") is True, "changed without a reload"
    assert Server.objects.get(pk=server.pk).state == "draining"
    assert actor.problems == [] and watcher.problems == []


def test_socket_killed_changes_made_restored_every_cell_matches(new_page, expect):
    servers = [make_server() for _ in range(3)]
    make_user("viewer", username="vic", password="right-password")
    page = login(new_page(), "vic")
    expect(page.locator("#live-badge")).to_have_text("Live")
    # Kill the socket and keep it down (every reconnect fails) while the fleet changes.
    page.evaluate("""() => { window.__RealWebSocket = window.WebSocket;
        window.WebSocket = class { constructor() { throw new Error('offline (test)'); } };
        window.__live.socket().close(); }""")
    expect(page.locator("#live-badge")).to_have_text("Reconnecting…", timeout=2000)
    gpus = list(Gpu.objects.filter(server__in=servers).order_by("pk"))[:10]
    for i, gpu in enumerate(gpus):
        if i % 2:
            gpu_quarantine(gpu=gpu, actor=ACTOR, reason="test")
        else:
            gpu_drain(gpu=gpu, actor=ACTOR)
    ok, _, _ = _cells_match_database(page, servers)
    assert not ok, "the page cannot know yet"
    page.evaluate("() => { window.WebSocket = window.__RealWebSocket; }")
    expect(page.locator("#live-badge")).to_have_text("Live", timeout=8000)
    page.wait_for_function("() => window.__live.applied > 0")
    for _ in range(20):
        ok, shown, expected = _cells_match_database(page, servers)
        if ok:
            break
        page.wait_for_timeout(250)
    assert ok, (shown, expected)
    assert [p for p in page.problems if "offline (test)" not in p] == []


def test_a_server_drained_by_keyboard_alone(new_page, expect):
    server = make_server(hostname="kbd-01")
    make_user("support", username="ana", password="right-password")
    page = login(new_page(), "ana")
    # Tab to the map (one tab stop), Enter opens the first GPU's card with focus in it.
    for _ in range(15):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "fleet-map":
            break
    assert page.evaluate("document.activeElement.id") == "fleet-map"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    assert "kbd-01 GPU 1: free" in page.locator("#map-active-cell").get_attribute("aria-label")
    # Every cell has its name, not only the active one.
    page.wait_for_function("() => window.__live.unnamed() === 0")
    names = page.evaluate("() => [...document.querySelectorAll('#fleet-map .t i')]"
                          ".map(c => c.getAttribute('aria-label'))")
    assert names == [f"kbd-01 GPU {n}: free" for n in range(1, 9)]
    # S selects the active GPU's server for the selection bar (S again unselects it).
    page.keyboard.press("s")
    expect(page.locator("#map-selection")).to_contain_text("1 server selected: kbd-01")
    page.keyboard.press("s")
    expect(page.locator("#map-selection")).to_be_hidden()
    page.keyboard.press("Enter")
    expect(page.locator("#gpu-card")).to_contain_text("kbd-01 GPU 1: free")
    # In the card: the link to the server comes first.
    page.wait_for_function("() => document.activeElement && document.activeElement.textContent === 'Open kbd-01'")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/servers/{server.pk}/")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.action") == "server.drain":
            break
    page.keyboard.press("Enter")
    expect(page.locator("#action-dialog")).to_contain_text("Drain kbd-01: no lease is running")
    # The dialog takes focus once htmx has settled its content.
    page.wait_for_function("() => document.activeElement && document.activeElement.textContent === 'Confirm'")
    page.keyboard.press("Enter")
    expect(page.locator("#action-dialog")).to_contain_text("Drain started: kbd-01")
    expect(page.locator(f"#server-{server.pk}-header")).to_contain_text("Drained")
    assert Server.objects.get(pk=server.pk).state == "drained"
    assert page.problems == []


def test_a_viewer_sees_no_buttons(new_page, expect):
    server = make_server()
    hold(server, 1, holder="lease/1", owner="acme")
    make_user("viewer", username="vic", password="right-password")
    page = login(new_page(), "vic")
    page.hover(f"#server-{server.pk} i >> nth=0")
    expect(page.locator("#gpu-card")).to_contain_text("GPU 1: in use, acme, lease 1")
    assert page.locator("#gpu-card button").count() == 0
    page.goto(f"/servers/{server.pk}/")
    expect(page.locator("#live-badge")).to_have_text("Live")
    assert page.locator("button[data-action]").count() == 0
    assert page.locator("form[action^='/actions/']").count() == 0
    assert page.problems == []


def test_screenshots_for_the_readme(new_page, expect):
    servers = [make_server(rack=f"r{i // 8 + 1:02d}", slot=i % 8 + 1, hostname=f"gpu-{i + 1:04d}") for i in range(24)]
    notes = lived_in(servers)
    make_user("support", username="ana", password="right-password")
    page = login(new_page(viewport=(1280, 820)), "ana")
    expect(page.locator("#live-badge")).to_have_text("Live")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # One client clock ticks times in state and marks what passes its limit overdue.
    badge = page.locator(f"#server-{notes['draining'].pk} .ss")
    expect(badge).to_have_text("draining <1 min")
    page.evaluate(f"""() => {{ const b = document.querySelector('#server-{notes['draining'].pk} .ss');
        b.dataset.s = String(Math.floor(Date.now() / 1000) - 7290); b.dataset.o = '3600'; window.__live.tick(); }}""")
    expect(badge).to_have_text("draining 2 h 1 min")
    expect(badge).to_have_class("ss od")
    # Two servers selected (Shift+click) for the selection bar, and a GPU's card.
    page.click(f"#server-{servers[6].pk}", modifiers=["Shift"])
    page.click(f"#server-{servers[7].pk}", modifiers=["Shift"])
    expect(page.locator("#map-selection")).to_contain_text(f"2 servers selected: {servers[6].hostname}")
    page.hover(f"#server-{notes['draining'].pk} i >> nth=2")
    expect(page.locator("#gpu-card")).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "fleet-map.png"))
    assert low_contrast_text(page) == []
    page.click("#map-selection button[data-action='server.drain']")
    expect(page.locator("#action-dialog")).to_contain_text(f"Drain {servers[6].hostname}:")
    expect(page.locator("#action-dialog input[name=typed]")).to_be_focused()
    page.screenshot(path=str(SCREENSHOTS / "multi-drain-preview.png"))
    page.click("#action-dialog button[data-close]")
    page.goto(f"/servers/{notes['draining'].pk}/")
    expect(page.locator("#live-badge")).to_have_text("Live")
    page.screenshot(path=str(SCREENSHOTS / "server-page.png"), full_page=True)
    # White on the active partitions' blue: their lease links too (the browser's link blue was 1.8:1).
    assert page.locator(".tree .on > .pl a").count() > 0
    assert low_contrast_text(page) == []
    page.click(f"#server-{notes['draining'].pk}-header button[data-action='server.drain_cancel']")
    expect(page.locator("#action-dialog")).to_contain_text("it stays cordoned")
    page.screenshot(path=str(SCREENSHOTS / "action-preview.png"))
    assert page.problems == []
