"""One settings module switches on the environment (checked in fresh interpreters)."""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, django
from django.conf import settings
django.setup()
print(json.dumps({
    "engine": settings.DATABASES["default"]["ENGINE"],
    "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
    "broker": settings.CELERY_BROKER_URL,
    "simulated": settings.SIMULATED_FLEET,
    "cluster": settings.CLUSTER_ADAPTER,
    "debug": settings.DEBUG,
    "pool": settings.DATABASES["default"].get("OPTIONS", {}).get("pool"),
    "conn_max_age": settings.DATABASES["default"].get("CONN_MAX_AGE"),
}))
"""

BASE_ENV = {k: v for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "SIMULATED_FLEET", "CELERY_BROKER_URL", "DATABASE_POOL",
                         "CONN_MAX_AGE"}}


def probe(**env):
    merged = {**BASE_ENV, "SECRET_KEY": "x", "ALLOWED_HOSTS": "localhost", "DJANGO_SETTINGS_MODULE": "console.settings"}
    merged.update(env)
    merged = {k: v for k, v in merged.items() if v is not None}
    out = subprocess.run([sys.executable, "-c", PROBE], env=merged, capture_output=True, text=True, timeout=60)
    return out


def test_embedded_defaults_need_no_server():
    out = probe()
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["engine"] == "django.db.backends.sqlite3"
    assert got["layer"] == "channels.layers.InMemoryChannelLayer"
    assert got["broker"].startswith("filesystem://")
    assert got["simulated"] is True and got["cluster"] == "fleet.cluster.simulated_cluster"
    assert got["debug"] is False


def test_database_url_switches_to_postgres():
    got = json.loads(probe(DATABASE_URL="postgres://u@127.0.0.1:5432/x").stdout)
    assert got["engine"] == "django.db.backends.postgresql"


def test_postgres_connections_come_from_a_pool_unless_turned_off():
    """A connection per request cost the API two thirds of its throughput (bench/api.py: 75 requests a
    second against 230); a pooler in front (PgBouncer) turns the pool off and may keep connections."""
    url = "postgres://u@127.0.0.1:5432/x"
    pooled = json.loads(probe(DATABASE_URL=url).stdout)
    assert pooled["pool"] == {"min_size": 2, "max_size": 20, "timeout": 10}
    unpooled = json.loads(probe(DATABASE_URL=url, DATABASE_POOL="false", CONN_MAX_AGE="60").stdout)
    assert unpooled["pool"] is None and unpooled["conn_max_age"] == 60
    assert json.loads(probe().stdout)["pool"] is None  # SQLite: no pool


def test_redis_url_switches_channel_layer_and_broker():
    got = json.loads(probe(REDIS_URL="redis://127.0.0.1:6379/3").stdout)
    assert got["layer"] == "channels_redis.core.RedisChannelLayer"
    assert got["broker"] == "redis://127.0.0.1:6379/3"


def test_real_fleet_picks_the_kubernetes_adapter():
    got = json.loads(probe(SIMULATED_FLEET="false").stdout)
    assert got["cluster"] == "hardware.kube.KubernetesCluster"


@pytest.mark.parametrize(("missing", "message"), [("SECRET_KEY", "SECRET_KEY is not set"),
                                                  ("ALLOWED_HOSTS", "ALLOWED_HOSTS is not set")])
def test_debug_off_refuses_to_start_without_secrets(missing, message):
    out = probe(**{missing: None})
    assert out.returncode != 0
    assert message in out.stderr


def test_debug_on_starts_with_development_defaults():
    out = probe(DEBUG="1", SECRET_KEY=None, ALLOWED_HOSTS=None)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["debug"] is True


TASK_APP_PROBE = """
import json, django
django.setup()
from tenants.tasks import lease_advance
print(json.dumps({"app": lease_advance.app.main, "broker": lease_advance.app.conf.broker_url}))
"""


def test_tasks_sent_from_any_django_process_use_the_configured_broker():
    """A management command or the web server (not only the worker) enqueues through the console's
    Celery app: with Celery's default app the message would go to amqp://localhost and be lost."""
    env = {**BASE_ENV, "SECRET_KEY": "x", "ALLOWED_HOSTS": "localhost", "DJANGO_SETTINGS_MODULE": "console.settings"}
    out = subprocess.run([sys.executable, "-c", TASK_APP_PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"app": "console", "broker": "filesystem://localhost//"}
