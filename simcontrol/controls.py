"""The simulator panel's controls, sent to the `simfleet` process over its SimAdmin gRPC service (the
same channel as the server's NodeAgent). Nothing here writes what the hardware would report: an
injected Xid reaches the console the way a real one does, on the agent's health stream (the node
watcher records it). Each control that took effect is audited with the admin as the actor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from django.conf import settings
from django.db import transaction

from console.audit import Actor, audit_record
from console.errors import DomainError
from fleet.agents import agent_for
from fleet.models import Gpu, Server
from hardware.agent_client import SimAdminClient
from hardware.exceptions import AgentUnavailable, HardwareError
from hardware.types import ClockInfo
from hardware.xid import XID_CATALOG, XidAction, xid_entry
from simcontrol.models import Simulation

T = TypeVar("T")
# The panel waits this long for the simulator; a fleet that is not running fails fast anyway.
TIMEOUT_S = 3.0
MAX_ACCELERATION = 10_000.0
# Idle GPUs sit near 30 °C (HARDWARE.md); the panel's "cool down" brings one back there.
IDLE_TEMP_C = 32.0


# What the console does on each Xid (HARDWARE.md's "action" column), in words for the panel.
XID_ACTION_WORDS = {
    XidAction.NONE: "none for the GPU: the tenant's application",
    XidAction.WATCH: "watch; run diagnostics",
    XidAction.RESTART_APP: "restart the application; reset the GPU later",
    XidAction.RESET_WHEN_CONVENIENT: "reset when convenient",
    XidAction.RESET_GPU: "reset the GPU",
    XidAction.DRAIN_AND_RESET: "drain and reset the GPU",
    XidAction.DRAIN_AND_REBOOT: "drain the node; reboot the host",
}


class SimulatorError(DomainError):
    """The simulated fleet could not do it; the message says why, in words."""


class SimulatorUnreachable(SimulatorError):
    """The `simfleet` process does not answer (HTTP 503 on the panel)."""


@dataclass(frozen=True)
class ThermalLevel:
    key: str
    label: str
    temperature_c: float


def thermal_levels(server: Server) -> list[ThermalLevel]:
    """What the panel offers for a GPU of this server's platform (HARDWARE.md: H100 SXM max operating
    87 °C, slowdown 89 °C, shutdown 92 °C)."""
    p = server.platform_spec
    return [
        ThermalLevel("slowdown", f"thermal slowdown ({p.slowdown_temp_c} °C: clocks throttled)", p.slowdown_temp_c),
        ThermalLevel("hot", f"above max operating ({p.max_operating_temp_c + 1} °C)", p.max_operating_temp_c + 1),
        ThermalLevel("shutdown", f"thermal shutdown ({p.shutdown_temp_c} °C)", p.shutdown_temp_c),
        ThermalLevel("cool", f"cool down ({IDLE_TEMP_C:g} °C, idle)", IDLE_TEMP_C),
    ]


def _admin(server: Server) -> SimAdminClient:
    return agent_for(server).sim_admin(timeout=TIMEOUT_S, retries=1)


def _call(server: Server, doing: str, fn: Callable[[SimAdminClient], T]) -> T:
    if not settings.SIMULATED_FLEET:
        raise SimulatorError("this console runs a real fleet: the simulator's controls are off")
    if not server.agent_endpoint:
        raise SimulatorError(f"{server.hostname} has no agent endpoint: the simulated fleet did not register it")
    try:
        return fn(_admin(server))
    except AgentUnavailable as exc:
        raise SimulatorUnreachable(
            f"The simulated fleet does not answer at {server.agent_endpoint} ({server.hostname}), so nothing "
            f"was done. Is `manage.py simfleet` running (the Procfile's `fleet`)? Detail: {exc}"
        ) from exc
    except HardwareError as exc:
        raise SimulatorError(f"The simulator refused to {doing} on {server.hostname}: {exc}") from exc


def fault_inject(*, gpu: Gpu, kind: str, actor: Actor, xid: int | None = None, thermal: str = "",
                 nvlink_errors: int = 1) -> str:
    """Inject a fault on one GPU: an Xid of the catalog, a temperature, or NVLink errors. Returns what
    was done, in words."""
    server = gpu.server
    name = f"{server.hostname} GPU {gpu.module_id}"
    if kind == "xid":
        if xid not in XID_CATALOG:
            raise SimulatorError(f"Xid {xid} is not in the catalog; choose one of {', '.join(map(str, XID_CATALOG))}")
        entry = xid_entry(xid)
        _call(server, f"inject Xid {xid}", lambda a: a.inject_xid(gpu.module_id, xid))
        detail = {"kind": "xid", "xid": xid, "meaning": entry.meaning, "action": entry.action.value}
        done = f"Xid {xid} ({entry.meaning}) injected on {name}"
    elif kind == "thermal":
        level = next((t for t in thermal_levels(server) if t.key == thermal), None)
        if level is None:
            raise SimulatorError(f"unknown temperature {thermal!r}")
        _call(server, "set the temperature", lambda a: a.inject_thermal(gpu.module_id, level.temperature_c))
        detail = {"kind": "thermal", "level": level.key, "temperature_c": level.temperature_c}
        done = f"{name}: {level.label}"
    elif kind == "nvlink":
        if not 1 <= nvlink_errors <= 1_000_000:
            raise SimulatorError("NVLink errors: from 1 to 1,000,000")
        _call(server, "inject NVLink errors", lambda a: a.inject_nvlink(gpu.module_id, nvlink_errors))
        detail = {"kind": "nvlink", "count": nvlink_errors}
        done = f"{nvlink_errors} NVLink error(s) injected on {name}"
    else:
        raise SimulatorError(f"unknown fault kind {kind!r}")
    audit_record(actor=actor, verb="simcontrol.fault.injected", target=gpu, parent=server, after=detail,
                 message=done)
    return done


def agent_set(*, server: Server, up: bool, actor: Actor) -> str:
    """Take the server's node agent down (the console sees it stop answering) or bring it back."""
    state = _call(server, "bring the agent up" if up else "take the agent down", lambda a: a.set_agent(up=up))
    done = f"node agent on {server.hostname} {'up' if state else 'down'}"
    audit_record(actor=actor, verb=f"simcontrol.agent.{'up' if up else 'down'}", target=server,
                 after={"agent_up": state}, message=done)
    return done


def fabric_manager_restart(*, server: Server, actor: Actor) -> str:
    _call(server, "restart the fabric manager", lambda a: a.restart_fabric_manager())
    done = (f"fabric manager on {server.hostname} restarted: it accepts only the activated-partition list "
            f"for 60 simulated seconds")
    audit_record(actor=actor, verb="simcontrol.fabric_manager.restarted", target=server, message=done)
    return done


def _clock_server() -> Server:
    server = Server.objects.exclude(agent_endpoint="").order_by("pk").first()
    if server is None:
        raise SimulatorError("no simulated server is registered yet: start the simulated fleet (`make run`)")
    return server


def clock_get() -> ClockInfo:
    """The simulated fleet's clock (one clock for the whole `simfleet` process)."""
    return _call(_clock_server(), "read the clock", lambda a: a.get_clock())


def clock_set(*, acceleration: float, actor: Actor) -> str:
    if not 0 < acceleration <= MAX_ACCELERATION:
        raise SimulatorError(f"the clock speed must be above 0 and at most {MAX_ACCELERATION:g}× real time")
    info = _call(_clock_server(), "set the clock", lambda a: a.set_clock(acceleration=acceleration))
    done = f"simulated clock: {info.acceleration:g}× real time"
    with transaction.atomic():
        sim = Simulation.objects.select_for_update().get(pk=Simulation.objects.get_or_create(pk=1)[0].pk)
        before, sim.clock_acceleration = sim.clock_acceleration, info.acceleration
        sim.save(update_fields=["clock_acceleration", "updated_at"])
        audit_record(actor=actor, verb="simcontrol.clock.set", target=sim, before={"acceleration": before},
                     after={"acceleration": info.acceleration}, message=done)
    return done
