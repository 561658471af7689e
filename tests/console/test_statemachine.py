"""Every state machine: each allowed edge changes state and audits; every other pair raises and changes
nothing; and no code outside the one transition function assigns `.state`."""

import ast
from pathlib import Path

import pytest

from console.audit import Actor
from console.models import AuditEvent
from console.statemachine import InvalidTransition
from fleet.states import GPU_MACHINE, PARTITION_MACHINE, SERVER_MACHINE
from tenants.states import LEASE_MACHINE, TENANT_MACHINE
from tests.factories import LeaseFactory, TenantFactory, make_server

ACTOR = Actor.system("tests")
ROOT = Path(__file__).resolve().parents[2]


def _make(kind):
    if kind == "gpu":
        return make_server().gpus.first()
    if kind == "server":
        return make_server()
    if kind == "partition":
        return make_server().partitions.get(partition_id=0)
    if kind == "tenant":
        return TenantFactory()
    return LeaseFactory()


MACHINES = {
    "gpu": GPU_MACHINE,
    "server": SERVER_MACHINE,
    "partition": PARTITION_MACHINE,
    "tenant": TENANT_MACHINE,
    "lease": LEASE_MACHINE,
}
PAIRS = [
    (kind, a, b)
    for kind, machine in MACHINES.items()
    for a in machine.states
    for b in machine.states
    if a != b
]


@pytest.mark.django_db
@pytest.mark.parametrize(("kind", "current", "to"), PAIRS, ids=lambda v: str(v))
def test_every_pair(kind, current, to):
    machine = MACHINES[kind]
    obj = _make(kind)
    type(obj).objects.filter(pk=obj.pk).update(state=current)
    obj.refresh_from_db()
    events = AuditEvent.objects.count()
    if machine.allowed(current, to):
        assert machine.transition(obj, to, actor=ACTOR, message="walk") is True
        obj.refresh_from_db()
        assert obj.state == to
        event = AuditEvent.objects.first()
        assert event.verb == f"{machine.verb_prefix}.{to}"
        assert event.before == {"state": current} and event.after["state"] == to
        assert machine.transition(obj, to, actor=ACTOR) is False  # no-op when already there
        assert AuditEvent.objects.count() == events + 1
    else:
        with pytest.raises(InvalidTransition):
            machine.transition(obj, to, actor=ACTOR)
        obj.refresh_from_db()
        assert obj.state == current
        assert AuditEvent.objects.count() == events


def test_every_state_is_reachable_and_can_move_on():
    for name, machine in MACHINES.items():
        targets = {b for _, b in machine.edges}
        sources = {a for a, _ in machine.edges}
        initial = machine.states[0]
        assert set(machine.states) - targets <= {initial}, name
        terminal = set(machine.states) - sources
        assert terminal <= {"released", "failed"} or name != "lease", name


def test_no_code_assigns_state_outside_the_state_machine():
    offenders = []
    for folder in ("console", "fleet", "tenants"):
        for path in (ROOT / folder).rglob("*.py"):
            if "migrations" in path.parts or path.name == "statemachine.py":
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
                )
                for target in targets:
                    if isinstance(target, ast.Attribute) and target.attr == "state":
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
