"""The simulator panel: admins only (viewer and support get 403 and no link), shown only for a
simulated fleet; every action reaches the `simfleet` servers over SimAdmin gRPC and is audited with
the admin as the actor; a simulator that does not answer is said in words (503), never a 500."""

from __future__ import annotations

import pytest

from console.audit import Actor
from console.models import AuditEvent
from fleet.agents import forget_agents
from fleet.models import Server
from fleet.reconciler import reconcile_fleet
from simcontrol.models import Simulation
from simulator.fabric_manager import FmState
from simulator.fleet import SimFleet
from tests.factories import make_server, make_user
from tests.support.simfleet import register

pytestmark = pytest.mark.django_db
ROLES = ("anonymous", "none", "viewer", "support", "admin")
ONLY_ADMIN = {"anonymous": 302, "none": 403, "viewer": 403, "support": 403, "admin": 200}
POSTS = ["/simulator/fault/", "/simulator/node/", "/simulator/clock/", "/simulator/workload/"]


def _client(client, role):
    if role != "anonymous":
        client.force_login(make_user(None if role == "none" else role, username=f"u-{role}"))
    return client


@pytest.fixture
def fleet(settings):
    """Two simulated servers on their own ports (as `make run` serves 16), registered from GetInventory."""
    settings.AGENT_INSECURE = True
    forget_agents()
    sim = SimFleet(2, platform="hgx-h100-8", variant="supermicro", insecure=True, accel=60.0,
                   isolate_gpus=True).start()
    register(sim, actor=Actor.system("test"))
    yield sim
    forget_agents()
    sim.stop()


@pytest.mark.parametrize("role", ROLES)
def test_only_admins_open_the_panel_and_see_its_link(client, role):
    make_server()
    c = _client(client, role)
    response = c.get("/simulator/")
    assert response.status_code == ONLY_ADMIN[role]
    if role == "anonymous":
        assert response["Location"].startswith("/login/")
    if role not in ("anonymous", "none"):
        assert ('href="/simulator/"' in c.get("/").content.decode()) == (role == "admin")


@pytest.mark.parametrize("role", ["none", "viewer", "support"])
def test_no_action_for_others_and_nothing_reaches_the_fleet(client, fleet, role):
    c = _client(client, role)
    server = Server.objects.order_by("hostname").first()
    for url in POSTS:
        response = c.post(url, {"server": server.pk, "module": 3, "fault": "xid:48", "action": "agent-down",
                                "acceleration": 600, "rate_per_min": 5})
        assert response.status_code == 403, url
    host = fleet.hosts[server.hostname]
    assert host.agent_up and host.gpus[3].ecc_uncorrected == 0 and fleet.clock.acceleration == 60.0
    assert not AuditEvent.objects.filter(verb__startswith="simcontrol.").exists()


def test_no_panel_for_a_real_fleet(client, settings):
    settings.SIMULATED_FLEET = False
    c = _client(client, "admin")
    assert c.get("/simulator/").status_code == 404
    assert 'href="/simulator/"' not in c.get("/").content.decode()


def _audited(verb: str) -> AuditEvent:
    event = AuditEvent.objects.filter(verb=verb).latest("id")
    assert event.actor_text == "u-admin" and event.actor_id is not None
    return event


def test_each_action_reaches_the_simulated_fleet(client, fleet):
    c = _client(client, "admin")
    page = c.get("/simulator/").content.decode()
    assert "60×" in page and "Xid 79 — GPU fell off the bus" in page and "thermal slowdown (89 °C" in page
    server = Server.objects.order_by("hostname").first()
    host = fleet.hosts[server.hostname]

    response = c.post("/simulator/fault/", {"server": server.pk, "module": 3, "fault": "xid:48"}, follow=True)
    assert "Xid 48 (double-bit ECC error) injected on" in response.content.decode()
    assert host.gpus[3].ecc_uncorrected == 1
    assert _audited("simcontrol.fault.injected").after["xid"] == 48

    c.post("/simulator/fault/", {"server": server.pk, "module": 2, "fault": "thermal:slowdown"})
    assert host.gpus[2].temperature_c == 89.0

    # A stopped agent: asked first, then the console finds out the way it would (its reconciler's call fails).
    asked = c.post("/simulator/node/", {"server": server.pk, "action": "agent-down"})
    assert asked.status_code == 200 and host.agent_up
    assert f"Take the node agent of {server.hostname} down?" in asked.content.decode()
    assert not AuditEvent.objects.filter(verb="simcontrol.agent.down").exists()
    c.post("/simulator/node/", {"server": server.pk, "action": "agent-down", "confirmed": "1"})
    assert not host.agent_up
    _audited("simcontrol.agent.down")
    reconcile_fleet()
    assert Server.objects.get(pk=server.pk).state == "unreachable"
    c.post("/simulator/node/", {"server": server.pk, "action": "agent-up"})
    assert host.agent_up
    reconcile_fleet()
    assert Server.objects.get(pk=server.pk).state == "active"

    response = c.post("/simulator/clock/", {"acceleration": "600"}, follow=True)
    assert "simulated clock: 600× real time" in response.content.decode()
    assert fleet.clock.acceleration == 600.0
    assert Simulation.objects.get(pk=1).clock_acceleration == 600.0
    assert _audited("simcontrol.clock.set").after == {"acceleration": 600.0}

    c.post("/simulator/clock/", {"acceleration": "1"})  # the 60 s window must not pass before the check
    c.post("/simulator/node/", {"server": server.pk, "action": "fabric-manager-restart"})
    assert host.fabric_manager.state != FmState.AWAITING_ACTIVATED_LIST  # asked first, nothing done
    c.post("/simulator/node/", {"server": server.pk, "action": "fabric-manager-restart", "confirmed": "1"})
    assert host.fabric_manager.state == FmState.AWAITING_ACTIVATED_LIST
    _audited("simcontrol.fabric_manager.restarted")


def test_generator_started_and_stopped_from_the_panel(client, fleet):
    c = _client(client, "admin")
    form = {"rate_per_min": "5", "sizes": "1:4, 2:3, 4:2, 8:1", "lifetime_min_s": "60", "lifetime_max_s": "300",
            "tenants": "3", "tenant_quota": "32", "seed": "7", "action": "start"}
    response = c.post("/simulator/workload/", {**form, "sizes": "3:1", "lifetime_min_s": "500"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "3 GPUs is not a partition size" in html and "lifetime range" in html
    assert not Simulation.objects.get_or_create(pk=1)[0].generator_running
    c.post("/simulator/workload/", form)
    sim = Simulation.objects.get(pk=1)
    assert sim.generator_running and sim.seed == 7 and sim.rate_per_min == 5.0
    assert "Next requests" in c.get("/simulator/").content.decode()
    assert _audited("simcontrol.generator.started").after["seed"] == 7
    c.post("/simulator/workload/", {"action": "stop"})
    assert not Simulation.objects.get(pk=1).generator_running
    _audited("simcontrol.generator.stopped")


def test_a_simulator_that_does_not_answer_is_said_in_words(client, fleet):
    c = _client(client, "admin")
    server = Server.objects.order_by("hostname").first()
    fleet.stop()
    page = c.get("/simulator/")
    assert page.status_code == 200 and "does not answer" in page.content.decode()
    response = c.post("/simulator/fault/", {"server": server.pk, "module": 3, "fault": "xid:79"})
    assert response.status_code == 503
    html = response.content.decode()
    assert "Nothing was done." in html and "manage.py simfleet" in html
    assert not AuditEvent.objects.filter(verb__startswith="simcontrol.").exists()


def test_bad_input_is_a_400_in_words(client, fleet):
    c = _client(client, "admin")
    server = Server.objects.order_by("hostname").first()
    for data, words in [
        ({"module": 9, "fault": "xid:48"}, "has no GPU 9"),
        ({"module": 1, "fault": "xid:999"}, "not in the catalog"),
        ({"module": 1, "fault": "thermal:melt"}, "unknown temperature"),
        ({"module": 1, "fault": ""}, "choose a fault"),
    ]:
        response = c.post("/simulator/fault/", {"server": server.pk, **data})
        assert response.status_code == 400 and words in response.content.decode(), data
    assert c.post("/simulator/clock/", {"acceleration": "fast"}).status_code == 400
    assert c.post("/simulator/clock/", {"acceleration": "0"}).status_code == 400
    assert c.post("/simulator/node/", {"server": "x", "action": "agent-down"}).status_code == 400
    assert c.post("/simulator/node/", {"server": server.pk, "action": "explode"}).status_code == 400
    assert not AuditEvent.objects.filter(verb__startswith="simcontrol.").exists()
