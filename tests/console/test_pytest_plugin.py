"""console.pytest_plugin under pytest-xdist: each worker its own var/ and Redis database, since two
workers that share a file lock or a channel-layer group see each other's tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _plugin_env(**env: str) -> dict:
    """The environment the plugin leaves, imported fresh in a process with `env` (and nothing else's)."""
    base = {k: v for k, v in os.environ.items() if k not in ("VAR_DIR", "REDIS_URL", "PYTEST_XDIST_WORKER")}
    code = (
        "import json, os, console.pytest_plugin;"
        "print(json.dumps({k: os.environ.get(k) for k in ('VAR_DIR', 'REDIS_URL')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def test_each_worker_gets_its_own_var_and_redis_database():
    gw0 = _plugin_env(PYTEST_XDIST_WORKER="gw0", REDIS_URL="redis://127.0.0.1:6379/0")
    gw1 = _plugin_env(PYTEST_XDIST_WORKER="gw1", REDIS_URL="redis://127.0.0.1:6379")
    assert gw0 == {"VAR_DIR": str(ROOT / "var" / "test-gw0"), "REDIS_URL": "redis://127.0.0.1:6379/8"}
    assert gw1 == {"VAR_DIR": str(ROOT / "var" / "test-gw1"), "REDIS_URL": "redis://127.0.0.1:6379/9"}


def test_a_var_dir_of_ones_own_is_split_per_worker_too(tmp_path):
    assert _plugin_env(PYTEST_XDIST_WORKER="gw1", VAR_DIR=str(tmp_path))["VAR_DIR"] == str(tmp_path / "test-gw1")


def test_without_xdist_nothing_changes(tmp_path):
    assert _plugin_env(VAR_DIR=str(tmp_path), REDIS_URL="redis://h:1/3") == {"VAR_DIR": str(tmp_path),
                                                                            "REDIS_URL": "redis://h:1/3"}
