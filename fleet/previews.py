"""Operator actions with a dry run first: what an action would do, why it cannot, and a signed token
that the confirmation must carry. The operator UI and the REST API both use this module.

    p = preview(action="server.drain", target_ids=[12])   # or preview_server_drain(target_ids=[12])
    p.summary   # "Drain srv-0412: 3 leases of acme, beta, gamma (8 GPUs) keep running; no new leases"
    p.blockers  # ["srv-0412 is unreachable: …"] — confirm() refuses while there are any
    p.friction  # "undo" | "confirm" | "type"; with "type", p.confirm_text must be typed back
    outcome = confirm(token=p.token, actor=actor, typed="srv-0412")  # Outcome(message, operation_id, …)

Errors map to HTTP like the other domain errors: PreviewInvalid 400, ConfirmationMismatch 400,
PreviewChanged 409 (its `.preview` is the fresh one to show), PreviewBlocked 409 (`.preview.blockers`).

The token signs (action, target ids, state version): the version is a digest of every row the
action depends on (the servers' and GPUs' states, the open allocations on them). `confirm()`
recomputes the preview for the token's targets — never for any other set — and raises
`PreviewChanged` (carrying the fresh preview) when the version differs, so a change between the
preview and the confirmation is shown to the operator instead of applied. Every confirmed action
writes an audit event `fleet.action.<action>` holding the previewed impact, in the same transaction
as the change.

Actions (ACTIONS): server.cordon, server.uncordon, server.drain (one or several servers: several are
one `servers.drain` Operation whose parts are the servers' drains, and the dialog lists each server
with its leases),
server.drain_cancel, gpu.drain, gpu.scrub, gpu.level_firmware, gpu.clear_quarantine.
Friction follows the blast radius: cordon and uncordon apply at once with an Undo; scrub, level and
single drains ask for a confirmation; clearing a quarantine, draining several servers or a server
whose leases belong to more than one tenant ask to type the hostname (or the count).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from django.core import signing
from django.db import transaction

from console.audit import Actor, audit_record
from console.errors import Conflict, DomainError
from console.models import Operation
from fleet import services
from fleet.models import AllocationGpu, Gpu, Server
from fleet.overview import holder_label
from fleet.states import GPU_CLEANING, GPU_HELD, SERVER_MACHINE, GpuState, ServerState

G, S = GpuState, ServerState
SALT = "fleet.previews"
TOKEN_MAX_AGE_S = 15 * 60
UNDO, CONFIRM, TYPE = "undo", "confirm", "type"


class PreviewInvalid(DomainError):
    """The token is not one we signed, has expired, or names another action (HTTP 400)."""


class PreviewBlocked(Conflict):
    """The action is refused; `preview.blockers` say why in words (HTTP 409)."""

    def __init__(self, preview: Preview):
        self.preview = preview
        super().__init__("; ".join(preview.blockers))


class PreviewChanged(Conflict):
    """What the action touches changed since the preview; `preview` is the fresh one (HTTP 409)."""

    def __init__(self, preview: Preview):
        self.preview = preview
        super().__init__(f"changed since the preview; now: {preview.summary}")


class ConfirmationMismatch(DomainError):
    """The typed confirmation does not match (HTTP 400)."""


@dataclass(frozen=True)
class Preview:
    """The dry run of one action on its targets. `impact` is what the audit event stores."""

    action: str
    target_ids: tuple[int, ...]
    title: str
    summary: str
    blockers: tuple[str, ...]
    friction: str
    confirm_text: str
    api_call: str
    impact: dict
    version: str
    target_names: tuple[str, ...] = ()
    token: str = ""
    items: tuple[str, ...] = ()  # one sentence per target when there are several (the dialog lists them)

    @property
    def allowed(self) -> bool:
        return not self.blockers


@dataclass(frozen=True)
class Outcome:
    """What a confirmed action did: a sentence, the operation to follow (drains, cleans), and the
    action that undoes it where there is one (cordon ↔ uncordon)."""

    message: str
    operation_id: int | None = None
    undo_action: str = ""
    target_ids: tuple[int, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------- what actions touch
def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class _ServerFacts:
    server: Server
    gpus: list[tuple[int, int, str, bool, str]]  # pk, module id, state, drain requested, firmware
    holders: dict[str, tuple[str, int]]  # holder -> (owner, GPUs)
    gpu_holder: dict[int, tuple[str, str]]  # gpu pk -> (holder, owner)

    @property
    def owners(self) -> list[str]:
        return sorted({owner for owner, _ in self.holders.values() if owner})

    def running(self) -> str:
        """"3 leases of acme, beta (8 GPUs) keep running" or "no lease is running"."""
        return f"{self.leases_sentence()} keep running" if self.holders else "no lease is running"

    def leases_sentence(self) -> str:
        if not self.holders:
            return "no leases"
        gpus = sum(n for _, n in self.holders.values())
        who = ", ".join(self.owners) or "unnamed holders"
        word = "lease" if all(h.startswith("lease/") for h in self.holders) else "allocation"
        return f"{_plural(len(self.holders), word)} of {who} ({_plural(gpus, 'GPU')})"


def _holders_named(f: _ServerFacts) -> str:
    """" — lease 41 (acme, 4 GPUs), lease 42 (beta, 2 GPUs)" or ""."""
    if not f.holders:
        return ""
    return " — " + ", ".join(f"{holder_label(h)} ({o or '?'}, {_plural(n, 'GPU')})"
                             for h, (o, n) in sorted(f.holders.items()))


def _server_facts(server_ids: list[int]) -> dict[int, _ServerFacts]:
    servers = Server.objects.in_bulk(server_ids)
    facts = {pk: _ServerFacts(s, [], {}, {}) for pk, s in servers.items()}
    for pk, server_id, module_id, state, drain, fw in Gpu.objects.filter(server_id__in=server_ids).order_by(
        "server_id", "module_id"
    ).values_list("pk", "server_id", "module_id", "state", "drain_requested", "firmware_version"):
        facts[server_id].gpus.append((pk, module_id, state, drain, fw))
    for gpu_id, server_id, holder, owner in AllocationGpu.objects.filter(
        held=True, gpu__server_id__in=server_ids
    ).values_list("gpu_id", "gpu__server_id", "allocation__holder", "allocation__owner"):
        f = facts[server_id]
        _, n = f.holders.get(holder, (owner, 0))
        f.holders[holder] = (owner, n + 1)
        f.gpu_holder[gpu_id] = (holder, owner)
    return facts


def _version(rows: object) -> str:
    return hashlib.blake2b(json.dumps(rows, sort_keys=True, default=str).encode(), digest_size=12).hexdigest()


def _server_version(facts: dict[int, _ServerFacts]) -> str:
    return _version([
        [pk, f.server.state, f.gpus, sorted(f.holders.items())] for pk, f in sorted(facts.items())
    ])


# The operator API's routes for these actions (console/api, fleet/operator_actions.py): target type →
# URL action → action here. An action not listed is the console's only.
API_ACTIONS = {
    "server": {"cordon": "server.cordon", "uncordon": "server.uncordon", "drain": "server.drain"},
    "gpu": {"drain": "gpu.drain", "scrub": "gpu.scrub", "level-firmware": "gpu.level_firmware",
            "clear-quarantine": "gpu.clear_quarantine"},
}


def _api_call(action: str, target_ids: list[int]) -> str:
    """The operator API's equivalent: a dry run, then the confirmation with its token."""
    kind = action.split(".")[0]
    route = next((url for url, name in API_ACTIONS.get(kind, {}).items() if name == action), None)
    if route is None:
        return "none: this action is the console's only"
    paths = [f"/api/v1/{kind}s/{i}/{route}/" for i in target_ids]
    return "\n".join(f'POST {path} {{"dry_run": true}}, then {{"preview_token": "…"}}' for path in paths)


def _missing(ids: list[int], found) -> list[str]:
    return [f"object {i} does not exist (any more)" for i in ids if i not in found]


def _signed(build: Callable[..., Preview]) -> Callable[..., Preview]:
    """A preview builder whose result carries its token: the signed (action, target ids, version)."""

    @functools.wraps(build)
    def signed(*, target_ids: list[int]) -> Preview:
        p = build(target_ids=list(target_ids))
        token = signing.dumps({"a": p.action, "t": list(p.target_ids), "v": p.version}, salt=SALT, compress=True)
        return dataclasses.replace(p, token=token)

    return signed


# ----------------------------------------------------------------------------- server actions
def _server_transition_blocker(server: Server, to: str, verb: str) -> str | None:
    if server.state == to:
        return f"{server.hostname} is already {server.get_state_display().lower()}"
    if not SERVER_MACHINE.allowed(server.state, to):
        return f"{server.hostname} is {server.get_state_display().lower()}: it cannot be {verb} now"
    return None


def _server_preview(action: str, target_ids: list[int], *, to: str, verb: str, title: str,
                    sentence: Callable[[_ServerFacts], str], friction: Callable[[dict], str]) -> Preview:
    facts = _server_facts(target_ids)
    blockers = _missing(target_ids, facts)
    for f in facts.values():
        b = _server_transition_blocker(f.server, to, verb)
        if b:
            blockers.append(b)
    names = [facts[i].server.hostname for i in target_ids if i in facts]
    owners = sorted({t for f in facts.values() for t in f.owners})
    level = friction({"servers": len(facts), "owners": len(owners)})
    items = tuple(sentence(facts[i]) for i in target_ids if i in facts)
    summary = "; ".join(items) or "nothing to do"
    if len(items) > 1:  # the dialog lists each server with its leases; the summary counts them
        items = tuple(sentence(facts[i]) + _holders_named(facts[i]) for i in target_ids if i in facts)
        holders = {h: n for f in facts.values() for h, (_, n) in f.holders.items()}
        leases = (f"{_plural(len(holders), 'lease')} of {', '.join(owners) or 'unnamed holders'} "
                  f"({_plural(sum(holders.values()), 'GPU')})" if holders else "no lease")
        summary = f"{title} {len(items)} servers, with {leases} on them"
    impact = {
        "servers": {f.server.hostname: {"state": f.server.state, "leases": {h: {"owner": o, "gpus": n}
                                                                          for h, (o, n) in f.holders.items()}}
                    for f in facts.values()},
        "owners": owners,
    }
    return Preview(
        action=action, target_ids=tuple(target_ids), title=f"{title} {', '.join(names)}", summary=summary,
        blockers=tuple(blockers), friction=level,
        confirm_text=(names[0] if len(names) == 1 else str(len(names))) if level == TYPE else "",
        api_call=_api_call(action, target_ids),
        impact=impact, version=_server_version(facts), target_names=tuple(names),
        items=items if len(items) > 1 else (),
    )


@_signed
def preview_server_cordon(*, target_ids: list[int]) -> Preview:
    return _server_preview(
        "server.cordon", target_ids, to=S.CORDONED, verb="cordoned", title="Cordon",
        sentence=lambda f: f"Cordon {f.server.hostname}: {f.running()}; no new leases",
        friction=lambda n: TYPE if n["servers"] > 1 else UNDO,
    )


@_signed
def preview_server_uncordon(*, target_ids: list[int]) -> Preview:
    return _server_preview(
        "server.uncordon", target_ids, to=S.ACTIVE, verb="uncordoned", title="Uncordon",
        sentence=lambda f: f"Uncordon {f.server.hostname}: new leases may be placed on its "
                           f"{_plural(sum(1 for g in f.gpus if g[2] == G.FREE), 'free GPU')}"
                           + ("; the drain in progress stops" if f.server.state == S.DRAINING else ""),
        friction=lambda n: TYPE if n["servers"] > 1 else UNDO,
    )


@_signed
def preview_server_drain(*, target_ids: list[int]) -> Preview:
    return _server_preview(
        "server.drain", target_ids, to=S.DRAINING, verb="drained", title="Drain",
        sentence=lambda f: f"Drain {f.server.hostname}: {f.running()}; no new leases; "
                           f"drained once they end and their GPUs are cleaned",
        friction=lambda n: TYPE if n["servers"] > 1 or n["owners"] > 1 else CONFIRM,
    )


@_signed
def preview_server_drain_cancel(*, target_ids: list[int]) -> Preview:
    return _server_preview(
        "server.drain_cancel", target_ids, to=S.CORDONED, verb="cordoned", title="Cancel the drain of",
        sentence=lambda f: f"Cancel the drain of {f.server.hostname}: it stays cordoned (no new leases); "
                           f"{f.running()}",
        friction=lambda n: CONFIRM,
    )


# ----------------------------------------------------------------------------- GPU actions
def _gpu_preview(action: str, target_ids: list[int], *, title: str, doing: str, expect: tuple[str, ...],
                 friction: str, sentence: Callable[[Gpu, tuple[str, str] | None], str]) -> Preview:
    gpus = {g.pk: g for g in Gpu.objects.select_related("server").filter(pk__in=target_ids)}
    held = {
        gpu_id: (holder, owner) for gpu_id, holder, owner in AllocationGpu.objects.filter(
            held=True, gpu_id__in=target_ids).values_list("gpu_id", "allocation__holder", "allocation__owner")
    }
    blockers = _missing(target_ids, gpus)
    summaries = []
    for pk in target_ids:
        gpu = gpus.get(pk)
        if gpu is None:
            continue
        name = f"{gpu.server.hostname} GPU {gpu.module_id}"
        holder = held.get(pk)
        if gpu.state not in expect:
            if holder and gpu.state in GPU_HELD:
                blockers.append(f"GPU {gpu.module_id} is in {holder_label(holder[0])} (tenant {holder[1] or '?'}): "
                                f"drain it first")
            elif gpu.state in GPU_CLEANING:
                blockers.append(f"{name} is {gpu.get_state_display().lower()} already: wait for it to finish")
            else:
                needs = " or ".join(G(e).label.lower() for e in expect)
                blockers.append(f"{name} is {gpu.get_state_display().lower()}; {doing} needs it {needs}")
        summaries.append(sentence(gpu, holder))
    version = _version([[g.pk, g.state, g.drain_requested, g.firmware_version, held.get(g.pk)]
                        for _, g in sorted(gpus.items())])
    names = [f"{gpus[i].server.hostname} GPU {gpus[i].module_id}" for i in target_ids if i in gpus]
    level = TYPE if friction == TYPE or len(names) > 1 else friction
    return Preview(
        action=action, target_ids=tuple(target_ids), title=f"{title} {', '.join(names)}",
        summary="; ".join(summaries) or "nothing to do", blockers=tuple(blockers), friction=level,
        confirm_text=(gpus[target_ids[0]].server.hostname if len(names) == 1 else str(len(names)))
        if level == TYPE and names else "",
        api_call=_api_call(action, target_ids),
        impact={"gpus": {n: {"state": gpus[i].state, "holder": held.get(i, ("", ""))[0],
                             "tenant": held.get(i, ("", ""))[1]} for n, i in zip(names, [
                                 i for i in target_ids if i in gpus], strict=True)}},
        version=version, target_names=tuple(names),
    )


def _gpu_name(gpu: Gpu) -> str:
    return f"{gpu.server.hostname} GPU {gpu.module_id}"


@_signed
def preview_gpu_drain(*, target_ids: list[int]) -> Preview:
    def sentence(gpu, holder):
        if holder:
            return (f"Drain {_gpu_name(gpu)}: {holder_label(holder[0])} of {holder[1] or '?'} keeps running; "
                    f"the GPU is drained after it ends and is cleaned")
        return f"Drain {_gpu_name(gpu)}: idle, drained at once; no new leases get it"
    return _gpu_preview("gpu.drain", target_ids, title="Drain", doing="a drain", friction=CONFIRM, sentence=sentence,
                        expect=(G.FREE, G.RESERVED, G.IN_USE, G.SCRUBBING, G.LEVELING, G.OFFLINE))


@_signed
def preview_gpu_scrub(*, target_ids: list[int]) -> Preview:
    return _gpu_preview("gpu.scrub", target_ids, title="Scrub", doing="a scrub", friction=CONFIRM,
                        expect=(G.FREE, G.DRAINED, G.OFFLINE),
                        sentence=lambda gpu, h: f"Scrub {_gpu_name(gpu)}: reset, clear its memory and level its "
                                                f"firmware; unavailable for a few minutes")


@_signed
def preview_gpu_level_firmware(*, target_ids: list[int]) -> Preview:
    def sentence(gpu, holder):
        pinned = gpu.server.platform_spec.pinned_firmware
        now = "at the pinned version" if gpu.firmware_version == pinned else f"{gpu.firmware_version} → {pinned}"
        return f"Re-level the firmware of {_gpu_name(gpu)} ({now}); unavailable for a few minutes"
    return _gpu_preview("gpu.level_firmware", target_ids, title="Re-level firmware of",
                        doing="a firmware level", friction=CONFIRM,
                        expect=(G.FREE, G.DRAINED), sentence=sentence)


@_signed
def preview_gpu_clear_quarantine(*, target_ids: list[int]) -> Preview:
    return _gpu_preview(
        "gpu.clear_quarantine", target_ids, title="Clear the quarantine of", friction=TYPE,
        doing="clearing a quarantine",
        expect=(G.QUARANTINED,),
        sentence=lambda gpu, h: f"Clear the quarantine of {_gpu_name(gpu)} "
                                f"({gpu.quarantine_reason or 'no reason recorded'}): scrub and level it, then "
                                f"it may be leased again",
    )


PREVIEWS: dict[str, Callable[..., Preview]] = {
    "server.cordon": preview_server_cordon,
    "server.uncordon": preview_server_uncordon,
    "server.drain": preview_server_drain,
    "server.drain_cancel": preview_server_drain_cancel,
    "gpu.drain": preview_gpu_drain,
    "gpu.scrub": preview_gpu_scrub,
    "gpu.level_firmware": preview_gpu_level_firmware,
    "gpu.clear_quarantine": preview_gpu_clear_quarantine,
}
ACTIONS = tuple(PREVIEWS)
UNDO_OF = {"server.cordon": "server.uncordon", "server.uncordon": "server.cordon"}


def preview(*, action: str, target_ids: list[int]) -> Preview:
    """The dry run of `action` on `target_ids` (server ids or GPU ids, by the action's prefix), signed."""
    fn = PREVIEWS.get(action)
    if fn is None:
        raise PreviewInvalid(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if not target_ids:
        raise PreviewInvalid("no targets")
    return fn(target_ids=[int(i) for i in target_ids])


def read_token(token: str) -> tuple[str, list[int], str]:
    """(action, target ids, version) of a token this module signed, or PreviewInvalid."""
    try:
        data = signing.loads(token, salt=SALT, max_age=TOKEN_MAX_AGE_S)
    except signing.SignatureExpired as exc:
        raise PreviewInvalid("the preview expired: preview again") from exc
    except signing.BadSignature as exc:
        raise PreviewInvalid("not a valid preview token") from exc
    return data["a"], [int(i) for i in data["t"]], data["v"]


def confirm(*, token: str, actor: Actor, typed: str = "") -> Outcome:
    """Apply the previewed action to exactly the token's targets, if nothing they depend on changed.

    Raises PreviewInvalid (bad or expired token), PreviewChanged (carries the fresh preview),
    PreviewBlocked (the fresh preview has blockers), ConfirmationMismatch (typed text wrong)."""
    action, target_ids, version = read_token(token)
    with transaction.atomic():
        # Lock the rows first so the recomputed version cannot change before the write.
        if action.startswith("server."):
            list(Server.objects.select_for_update().filter(pk__in=target_ids).order_by("pk"))
        else:
            list(Gpu.objects.select_for_update().filter(pk__in=target_ids).order_by("pk"))
        fresh = preview(action=action, target_ids=target_ids)
        if fresh.version != version:
            raise PreviewChanged(fresh)
        if fresh.blockers:
            raise PreviewBlocked(fresh)
        if fresh.friction == TYPE and typed.strip() != fresh.confirm_text:
            raise ConfirmationMismatch(f"type {fresh.confirm_text!r} to confirm")
        outcome = _apply(fresh, actor)
        first = (Server if action.startswith("server.") else Gpu).objects.get(pk=target_ids[0])
        audit_record(actor=actor, verb=f"fleet.action.{action}", target=first,
                     after={"targets": target_ids, "impact": fresh.impact, "summary": fresh.summary,
                            "operation": outcome.operation_id},
                     message=fresh.summary)
    return outcome


def _apply(p: Preview, actor: Actor) -> Outcome:
    ops: list[Operation] = []
    if p.action.startswith("server."):
        for server in Server.objects.filter(pk__in=p.target_ids).order_by("pk"):
            if p.action == "server.cordon":
                services.server_cordon(server=server, actor=actor)
            elif p.action == "server.uncordon":
                services.server_uncordon(server=server, actor=actor)
            elif p.action == "server.drain" and len(p.target_ids) > 1:
                ops.append(services.servers_drain(
                    servers=list(Server.objects.filter(pk__in=p.target_ids).order_by("pk")), actor=actor))
                break
            elif p.action == "server.drain":
                ops.append(services.server_drain(server=server, actor=actor))
            elif p.action == "server.drain_cancel":
                services.server_drain_cancel(server=server, actor=actor)
    else:
        for gpu in Gpu.objects.select_related("server").filter(pk__in=p.target_ids).order_by("pk"):
            if p.action == "gpu.drain":
                services.gpu_drain(gpu=gpu, actor=actor)
            elif p.action == "gpu.scrub":
                ops.append(services.gpu_scrub(gpu=gpu, actor=actor))
            elif p.action == "gpu.level_firmware":
                ops.append(services.gpu_level_firmware(gpu=gpu, actor=actor))
            elif p.action == "gpu.clear_quarantine":
                ops.append(services.gpu_clear_quarantine(gpu=gpu, actor=actor))
    done = {
        "server.cordon": "Cordoned", "server.uncordon": "Uncordoned", "server.drain": "Drain started",
        "server.drain_cancel": "Drain cancelled; the server stays cordoned", "gpu.drain": "Drain requested",
        "gpu.scrub": "Scrub started", "gpu.level_firmware": "Firmware level started",
        "gpu.clear_quarantine": "Quarantine cleared; scrub started",
    }[p.action]
    return Outcome(message=f"{done}: {', '.join(p.target_names)}", operation_id=ops[0].pk if ops else None,
                   undo_action=UNDO_OF.get(p.action, ""), target_ids=p.target_ids)
