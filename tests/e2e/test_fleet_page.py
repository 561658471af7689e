"""The operator UI in a real browser: login, the fleet map's cells, an htmx refresh of the map."""

import re

import pytest

from console.audit import Actor
from fleet.services import gpu_drain
from tests.factories import make_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anydb, pytest.mark.django_db(transaction=True)]


def _assert_htmx_loaded(page):
    assert page.evaluate("typeof htmx") == "object", "htmx did not load (static files not served?)"


def test_login_flow(page, live_url, operator, artifacts_dir, expect):
    page.goto("/")
    assert re.search(r"/login/\?next=/$", page.url), page.url
    expect(page.locator("#login-form")).to_be_visible()

    page.fill("#id_username", "operator")
    page.fill("#id_password", "wrong-password")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-form .errorlist")).to_contain_text("Please enter a correct username and password")
    assert "/login/" in page.url

    page.fill("#id_password", "right-password")
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{live_url}/")
    expect(page.locator("h1")).to_have_text("Fleet")
    expect(page.locator("header")).to_contain_text("operator")
    expect(page.locator("#live-badge")).to_have_text("Live")
    _assert_htmx_loaded(page)
    assert page.problems == []


def test_map_shows_every_server_and_gpu_state(logged_in_page, expect):
    page = logged_in_page
    servers = [make_server(), make_server("hgx-a100-8")]
    drained = servers[0].gpus.order_by("module_id").first()
    gpu_drain(gpu=drained, actor=Actor.system("e2e"))
    page.reload()
    for server in servers:
        tile = page.locator(f"#server-{server.pk}")
        expect(tile).to_contain_text(server.hostname)
        expect(tile.locator("i")).to_have_count(server.gpus.count())
    expect(page.locator(f"#server-{servers[0].pk} i").first).to_have_class("x")
    expect(page.locator(f"#server-{servers[0].pk} i.f")).to_have_count(7)
    assert page.problems == []


def test_htmx_fragment_refresh_replaces_the_map_without_reload(logged_in_page, expect):
    page = logged_in_page
    server = make_server()
    page.reload()
    _assert_htmx_loaded(page)
    page.evaluate("window.__sameDocument = true")
    gpu_drain(gpu=server.gpus.get(module_id=1), actor=Actor.system("e2e"))
    page.evaluate("htmx.ajax('GET', '/', {target: '#fleet-map', swap: 'outerHTML'})")
    expect(page.locator(f"#server-{server.pk} i").first).to_have_class("x")
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator("#fleet-map")).to_have_count(1)
    assert page.problems == []
