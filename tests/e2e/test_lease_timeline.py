"""A lease's boot in Chromium: the page of a booting lease on the simulated fleet watches its timeline
grow phase by phase to `running` without a reload (the running bar grows by the browser's clock,
the server sends phase boundaries); the screenshot for the README."""

from pathlib import Path

import pytest
from django.conf import settings as django_settings

from console.audit import Actor
from tenants import services
from tenants.models import BootPhase
from tenants.states import LeaseState
from tests.e2e.conftest import login, low_contrast_text
from tests.factories import make_user
from tests.support.boots import running_node_watch
from tests.support.simfleet import register, sim_fleet_with_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anydb, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("e2e", source="api")
IMAGE = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"
SCREENSHOTS = Path(django_settings.BASE_DIR) / "docs" / "screenshots"
BOOT_WALL_S = 6  # the simulated boot, played in about this many real seconds once the page watches


def _run_width(page) -> float:
    return page.evaluate("() => parseFloat(document.querySelector('.tl-bar.run').style.width)")


def test_a_booting_lease_grows_to_running_without_reload(new_page, expect, settings, tasks):
    with sim_fleet_with_cluster(settings, servers=1) as fleet:
        register(fleet, actor=ACTOR)
        fleet.clock.set_acceleration(0.01)  # all but paused while the page opens
        services.tenant_ensure(name="acme", actor=ACTOR)
        lease = services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=2, actor=ACTOR)
        tasks.run(boots=False)
        lease.refresh_from_db()
        assert lease.state == LeaseState.BOOTING, (lease.state, lease.failure_reason)
        predicted = sum(p.predicted_seconds or 0 for p in BootPhase.objects.filter(lease=lease))

        make_user("support", username="ana", password="right-password")
        page = login(new_page(viewport=(1280, 1000)), "ana")
        page.goto(f"/leases/{lease.pk}/")
        expect(page.locator("#live-badge")).to_have_text("Live")
        page.evaluate("window.__sameDocument = true")
        expect(page.locator(".tl-row.tl-running")).to_have_count(1)
        expect(page.locator(".tl-row.tl-waiting")).to_have_count(7)
        # The running bar grows by the browser's clock, with nothing from the server.
        before = _run_width(page)
        page.wait_for_timeout(700)
        assert _run_width(page) > before

        fleet.clock.set_acceleration(predicted / BOOT_WALL_S)
        with running_node_watch():
            # Boundaries arrive one by one: a moment with phases done and one still running.
            page.wait_for_function("() => document.querySelectorAll('.tl-row.tl-done').length >= 2"
                                   " && document.querySelectorAll('.tl-row.tl-running').length === 1",
                                   timeout=15_000)
            expect(page.locator(f"#lease-{lease.pk}-header .ls")).to_have_text("Running", timeout=20_000)
        expect(page.locator(".tl-row.tl-done")).to_have_count(8)
        expect(page.locator(".tl-row.slowest")).to_have_count(1)
        expect(page.locator(".slowest-note")).to_contain_text("Remedy")
        expect(page.locator(".boot-summary")).to_contain_text("Booted in")
        assert page.evaluate("window.__sameDocument") is True, "grew without a reload"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "lease-timeline.png"), full_page=True)
        assert low_contrast_text(page) == []
        # Whichever phase is the slowest, its name and flag fit the names' column (none is cut off).
        clipped = page.evaluate("""() => {
            const flag = document.querySelector('.tl-row.slowest .tl-flag');
            return [...document.querySelectorAll('.tl-row .tl-name')].filter(name => {
                if (!name.querySelector('.tl-flag')) name.append(' ', flag.cloneNode(true));
                name.style.fontWeight = '700';
                return name.scrollWidth > name.clientWidth;
            }).map(name => name.textContent);
        }""")
        assert clipped == []
        assert page.problems == []
