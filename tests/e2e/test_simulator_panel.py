"""The simulator panel in Chromium: an admin starts the workload generator, injects an Xid and takes
an agent down on a simulated fleet served over gRPC; screenshot for the README."""

from pathlib import Path

import pytest
from django.conf import settings

from console.audit import Actor
from fleet.agents import forget_agents
from fleet.models import Server
from fleet.reconciler import reconcile_fleet
from simcontrol.models import Simulation
from simulator.fleet import SimFleet
from tests.e2e.conftest import login, low_contrast_text
from tests.factories import make_user
from tests.support.simfleet import register

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anydb, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(settings.BASE_DIR) / "docs" / "screenshots"


@pytest.fixture
def sim_fleet(settings, transactional_db):
    settings.AGENT_INSECURE = True
    forget_agents()
    fleet = SimFleet(4, platform="hgx-h100-8", variant="supermicro", insecure=True, accel=60.0,
                     name_prefix="sim-hgx-h100-8", isolate_gpus=True).start()
    register(fleet, actor=Actor.system("e2e"))
    yield fleet
    forget_agents()
    fleet.stop()


def test_an_admin_drives_the_simulated_fleet_from_the_panel(new_page, expect, sim_fleet):
    make_user("admin", username="ada", password="right-password")
    page = login(new_page(viewport=(1280, 900)), "ada")
    page.click("nav >> text=Simulator")
    expect(page.locator("h1")).to_have_text("Simulator")
    expect(page.locator(".sim-clock")).to_contain_text("60× real time")

    page.click("#gen-title ~ div button[value=start]")
    expect(page.locator(".sim-flash")).to_contain_text("Workload generator started")
    expect(page.locator("#gen-title")).to_contain_text("running")
    expect(page.locator(".sim-next tbody tr")).to_have_count(5)

    hosts = sorted(sim_fleet.hosts)
    target = Server.objects.get(hostname=hosts[1])
    page.select_option("#fault-server", str(target.pk))
    page.select_option("#fault-gpu", "5")
    page.select_option("#fault-kind", "xid:79")
    page.click("text=Inject fault")
    expect(page.locator(".sim-flash")).to_contain_text(f"Xid 79 (GPU fell off the bus) injected on {hosts[1]} GPU 5")
    assert sim_fleet.hosts[hosts[1]].gpus[5].lost

    down = Server.objects.get(hostname=hosts[2])
    page.select_option("#node-server", str(down.pk))
    page.click("text=Take agent down")
    expect(page.locator(".sim-confirm")).to_contain_text(f"Take the node agent of {hosts[2]} down?")
    assert sim_fleet.hosts[hosts[2]].agent_up  # nothing yet: the panel asks first
    page.click(".sim-confirm button")
    expect(page.locator(".sim-flash")).to_contain_text(f"node agent on {hosts[2]} down")
    reconcile_fleet()  # the console's reconciler finds the agent silent
    page.reload()
    expect(page.locator(".sim-list")).to_contain_text(hosts[2])
    assert Simulation.objects.get(pk=1).generator_running
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "simulator-panel.png"), full_page=True)
    assert low_contrast_text(page) == []
    assert page.problems == []
