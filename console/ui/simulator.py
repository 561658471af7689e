"""The simulator panel (admins, simulated fleet only): faults, node agents, fabric managers, the clock
and the workload generator. Thin: simcontrol does the work (over SimAdmin gRPC to the `simfleet`
process, or through the tenants' services); these views parse the form and render the outcome.
Plain forms, readable without JavaScript: success redirects back with a message; a refusal renders
the panel again with the reason in words (400 for bad input, 503 when the simulator is away)."""

from __future__ import annotations

from functools import wraps

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from console.audit import Actor
from console.errors import DomainError
from console.ui.permissions import ADMINISTER, require
from fleet.models import Gpu, Server
from hardware.xid import XID_CATALOG
from simcontrol import controls, generator
from simcontrol.models import GeneratedLease
from simcontrol.schedule import MAX_TENANTS, Params, format_sizes, parse_sizes
from tenants.states import LEASE_UNFINISHED


class GeneratorForm(forms.Form):
    rate_per_min = forms.FloatField(label="Arrival rate (leases/min)", min_value=0.01, max_value=600)
    sizes = forms.CharField(label="Size mix (GPUs:weight)", max_length=200,
                            help_text="e.g. 1:4, 2:3, 4:2, 8:1 — four 1-GPU leases for each 8-GPU one")
    lifetime_min_s = forms.IntegerField(label="Shortest lifetime (s)", min_value=1)
    lifetime_max_s = forms.IntegerField(label="Longest lifetime (s)", min_value=1,
                                        help_text="from the request to its release, in wall-clock seconds")
    tenants = forms.IntegerField(label="Tenants", min_value=1, max_value=MAX_TENANTS)
    tenant_quota = forms.IntegerField(label="Tenant quota (GPUs)", min_value=1, max_value=10_000)
    seed = forms.IntegerField(label="Seed", min_value=0, max_value=2**31 - 1)

    def clean_sizes(self):
        try:
            return parse_sizes(self.cleaned_data["sizes"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc

    def params(self) -> Params:
        d = self.cleaned_data
        return Params(rate_per_min=d["rate_per_min"], sizes=d["sizes"], lifetime_min_s=d["lifetime_min_s"],
                      lifetime_max_s=d["lifetime_max_s"], tenants=d["tenants"])


def simulated_fleet_only(view):
    """After the permission check: a console that runs a real fleet has no simulator panel (404)."""
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not settings.SIMULATED_FLEET:
            raise Http404("this console runs a real fleet: there is no simulator panel")
        return view(request, *args, **kwargs)

    return wrapped


def _actor(request) -> Actor:
    return Actor.for_user(request.user, correlation_id=getattr(request, "correlation_id", ""))


def _generator_initial(sim) -> dict:
    return {"rate_per_min": sim.rate_per_min, "sizes": format_sizes(sim.params.sizes),
            "lifetime_min_s": sim.lifetime_min_s, "lifetime_max_s": sim.lifetime_max_s, "tenants": sim.tenants,
            "tenant_quota": sim.tenant_quota, "seed": sim.seed}


def _fault_choices(server: Server | None) -> list[tuple[str, list[tuple[str, str]]]]:
    xids = [(f"xid:{e.xid}", f"Xid {e.xid} — {e.meaning}") for e in XID_CATALOG.values()]
    thermal = [(f"thermal:{t.key}", t.label) for t in controls.thermal_levels(server)] if server else []
    return [("Xid (HARDWARE.md catalog)", xids), ("Temperature", thermal),
            ("NVLink", [("nvlink", "NVLink CRC/replay errors (10)")])]


def _panel(request, *, error: str = "", status: int = 200, form: GeneratorForm | None = None, chosen=None,
           confirm: dict | None = None):
    sim = generator.simulation()
    servers = list(Server.objects.exclude(agent_endpoint="").order_by("hostname"))
    clock, clock_error = None, ""
    try:
        clock = controls.clock_get()
    except controls.SimulatorError as exc:
        clock_error = str(exc)
    chosen = chosen or {}
    first = servers[0] if servers else None
    modules = sorted({m for s in servers for m in s.platform_spec.gpu_ids}) if servers else []
    live = GeneratedLease.objects.filter(released_at__isnull=True, lease__state__in=LEASE_UNFINISHED).count()
    return render(request, "console/simulator.html", {
        "sim": sim, "servers": servers, "modules": modules, "clock": clock, "clock_error": clock_error,
        "error": error, "chosen": chosen, "fault_choices": _fault_choices(first),
        "xids": [(e, controls.XID_ACTION_WORDS[e.action]) for e in XID_CATALOG.values()],
        "reconcile_every": f"{settings.RECONCILE_EVERY_S:g}",
        "form": form or GeneratorForm(initial=_generator_initial(sim)),
        "upcoming": [(due, a, generator.tenant_name(a.tenant)) for due, a in generator.upcoming(sim)],
        "live_leases": live, "unreachable": [s for s in servers if s.state == "unreachable"],
        "speeds": (1, 10, 60, 600), "confirm": confirm,
    }, status=status)


def _refused(request, exc: Exception, chosen=None):
    status = 503 if isinstance(exc, controls.SimulatorUnreachable) else 400
    text = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
    return _panel(request, error=text, status=status, chosen=chosen)


def _done(request, text: str):
    messages.success(request, text)
    return redirect("simulator")


@require_GET
@require(ADMINISTER)
@simulated_fleet_only
def panel(request):
    return _panel(request)


def _server(request) -> Server:
    raw = request.POST.get("server", "")
    server = Server.objects.filter(pk=int(raw)).first() if raw.isdigit() else None
    if server is None:
        raise controls.SimulatorError("choose a server of the simulated fleet")
    return server


@require_POST
@require(ADMINISTER)
@simulated_fleet_only
def fault(request):
    chosen = {"server": request.POST.get("server", ""), "module": request.POST.get("module", ""),
              "fault": request.POST.get("fault", "")}
    try:
        server = _server(request)
        module = request.POST.get("module", "")
        gpu = Gpu.objects.select_related("server").filter(server=server, module_id=int(module)).first() \
            if module.isdigit() else None
        if gpu is None:
            raise controls.SimulatorError(f"{server.hostname} has no GPU {module or '(none chosen)'}")
        kind, _, value = chosen["fault"].partition(":")
        if not kind or (kind == "xid" and not value.isdigit()):
            raise controls.SimulatorError("choose a fault")
        done = controls.fault_inject(gpu=gpu, kind=kind, actor=_actor(request),
                                     xid=int(value) if kind == "xid" else None, thermal=value, nvlink_errors=10)
    except DomainError as exc:
        return _refused(request, exc, chosen)
    return _done(request, f"{done}. The node watcher records it as the agent reports it.")


# Node actions that break something the console relies on: asked again before they are done.
_CONFIRM_FIRST = {
    "agent-down": ("Take the node agent of {host} down?",
                   "It answers nothing until you bring it up: the console marks {host} unreachable, and its "
                   "leases cannot start or be cleaned meanwhile.", "Take it down"),
    "fabric-manager-restart": ("Restart the fabric manager of {host}?",
                               "Its NVLink partitions stay down until the console sends the activated ones again "
                               "(it has 60 simulated seconds); a lease starting on {host} meanwhile waits.",
                               "Restart it"),
}


@require_POST
@require(ADMINISTER)
@simulated_fleet_only
def node(request):
    """Node agent down / up, fabric manager restart, on one server (the breaking ones confirmed first)."""
    chosen = {"node_server": request.POST.get("server", "")}
    action = request.POST.get("action", "")
    try:
        server = _server(request)
        if action in _CONFIRM_FIRST and request.POST.get("confirmed") != "1":
            question, consequence, button = (text.format(host=server.hostname) for text in _CONFIRM_FIRST[action])
            return _panel(request, chosen=chosen, confirm={"action": action, "server": server, "question": question,
                                                           "consequence": consequence, "button": button})
        if action in ("agent-down", "agent-up"):
            done = controls.agent_set(server=server, up=action == "agent-up", actor=_actor(request))
        elif action == "fabric-manager-restart":
            done = controls.fabric_manager_restart(server=server, actor=_actor(request))
        else:
            raise controls.SimulatorError(f"unknown action {action!r}")
    except DomainError as exc:
        return _refused(request, exc, chosen)
    return _done(request, f"{done}.")


@require_POST
@require(ADMINISTER)
@simulated_fleet_only
def clock(request):
    try:
        try:
            acceleration = float(request.POST.get("acceleration", ""))
        except ValueError:
            raise controls.SimulatorError("the clock speed is a number: simulated seconds per real second") from None
        done = controls.clock_set(acceleration=acceleration, actor=_actor(request))
    except DomainError as exc:
        return _refused(request, exc)
    return _done(request, f"{done}.")


@require_POST
@require(ADMINISTER)
@simulated_fleet_only
def workload(request):
    if request.POST.get("action") == "stop":
        generator.generator_stop(actor=_actor(request))
        return _done(request, "Workload generator stopped: no new requests; its leases are still released "
                              "when their lifetime ends.")
    form = GeneratorForm(request.POST)
    if not form.is_valid():
        return _panel(request, error="The generator was not started: correct the fields marked below.",
                      status=400, form=form)
    try:
        sim = generator.generator_start(params=form.params(), seed=form.cleaned_data["seed"], actor=_actor(request),
                                        tenant_quota=form.cleaned_data["tenant_quota"])
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
        return _panel(request, error="The generator was not started: correct the fields marked below.",
                      status=400, form=form)
    except DomainError as exc:
        return _refused(request, exc)
    return _done(request, f"Workload generator started: {sim.rate_per_min:g} leases/min over {sim.tenants} "
                          f"tenant(s), seed {sim.seed}.")


urlpatterns = [
    path("", panel, name="simulator"),
    path("fault/", fault, name="simulator-fault"),
    path("node/", node, name="simulator-node"),
    path("clock/", clock, name="simulator-clock"),
    path("workload/", workload, name="simulator-workload"),
]
