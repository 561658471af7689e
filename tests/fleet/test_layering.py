"""fleet owns the GPU allocation and never names its holders: no import of, and no mention of, the
tenants app anywhere in fleet (not even a task name in a string); console's infrastructure modules
name no app model. import-linter checks the imports; these check the text."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TENANTS_APP = re.compile(r"\btenants\b")
INFRASTRUCTURE = ("audit", "realtime", "statemachine", "models", "db", "dispatch", "operations", "locks",
                  "tasks_base", "errors")


def test_fleet_never_names_tenants():
    named = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "fleet").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if TENANTS_APP.search(line)
    ]
    assert named == []


def test_console_infrastructure_names_no_app_model():
    app_labels = re.compile(r"""["'](fleet|tenants)\.[a-z_]+["']""")
    named = [
        f"console/{name}.py:{n}: {line.strip()}"
        for name in INFRASTRUCTURE
        for n, line in enumerate((ROOT / "console" / f"{name}.py").read_text().splitlines(), start=1)
        if app_labels.search(line) or re.search(r"^\s*(from|import) (fleet|tenants)\b", line)
    ]
    assert named == []
