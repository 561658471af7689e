"""The operator UI in a real browser: login, the fleet table, an htmx refresh, a screenshot."""

import re

import pytest

from console.audit import Actor
from fleet.services import gpu_drain
from fleet.states import GpuState
from tests.factories import make_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _assert_htmx_loaded(page):
    assert page.evaluate("typeof htmx") == "object", "htmx did not load (static files not served?)"


def test_login_flow(page, live_server, operator, artifacts_dir, expect):
    page.goto("/")
    assert re.search(r"/login/\?next=/$", page.url), page.url
    expect(page.locator("#login-form")).to_be_visible()

    page.fill("#id_username", "operator")
    page.fill("#id_password", "wrong-password")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-form .errorlist")).to_contain_text("Please enter a correct username and password")
    assert "/login/" in page.url
    page.screenshot(path=str(artifacts_dir / "login-error.png"))

    page.fill("#id_password", "right-password")
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    expect(page.locator("h1")).to_have_text("Fleet")
    expect(page.locator("header")).to_contain_text("operator")
    _assert_htmx_loaded(page)
    assert page.problems == []


def test_fleet_page_shows_every_server_and_gpu_state(logged_in_page, expect):
    page = logged_in_page
    servers = [make_server(), make_server("hgx-a100-8")]
    actor = Actor.system("e2e")
    drained = servers[0].gpus.order_by("module_id").first()
    gpu_drain(gpu=drained, actor=actor)
    page.reload()

    _assert_htmx_loaded(page)
    for server in servers:
        row = page.locator(f"#server-{server.pk}")
        expect(row).to_be_visible()
        expect(row).to_contain_text(server.hostname)
        gpus = list(server.gpus.all())
        assert gpus
        expect(row.locator(".gpu")).to_have_count(len(gpus))
        for gpu in gpus:
            chip = page.locator(f"#gpu-{gpu.pk}")
            expect(chip).to_have_class(f"gpu {gpu.state}")
            expect(chip).to_have_text(str(gpu.module_id))
    expect(page.locator(f"#gpu-{drained.pk}")).to_have_class(f"gpu {GpuState.DRAINED}")
    assert page.problems == []


def test_htmx_fragment_refresh_updates_a_chip_without_reload(logged_in_page, expect):
    page = logged_in_page
    server = make_server()
    gpu = server.gpus.order_by("module_id").first()
    page.reload()
    _assert_htmx_loaded(page)
    chip = page.locator(f"#gpu-{gpu.pk}")
    expect(chip).to_have_class(f"gpu {GpuState.FREE}")
    page.evaluate("window.__sameDocument = true")

    assert gpu_drain(gpu=gpu, actor=Actor.system("e2e")).state == GpuState.DRAINED
    with page.expect_request(lambda req: req.headers.get("hx-request") == "true") as fragment_request:
        page.evaluate("htmx.ajax('GET', '/', {target: '#server-table', swap: 'outerHTML'})")
    assert fragment_request.value.method == "GET"

    expect(chip).to_have_class(f"gpu {GpuState.DRAINED}")
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded instead of swapping the fragment"
    expect(page.locator("#server-table")).to_have_count(1)
    expect(page.locator("html")).to_have_count(1)
    expect(page.locator(f"#server-{server.pk}")).to_be_visible()
    assert page.problems == []


def test_fleet_page_screenshot(logged_in_page, artifacts_dir, expect):
    page = logged_in_page
    servers = [make_server(), make_server("hgx-a100-8")]
    actor = Actor.system("e2e")
    gpus = list(servers[0].gpus.order_by("module_id"))
    gpu_drain(gpu=gpus[0], actor=actor)
    page.reload()
    expect(page.locator(f"#server-{servers[-1].pk}")).to_be_visible()

    path = artifacts_dir / "fleet-page.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.exists() and path.stat().st_size > 5_000
    print(f"fleet page screenshot: {path}")
    assert page.problems == []
