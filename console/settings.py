"""Settings for every environment, read from the environment (12-factor).

With nothing set: SQLite under var/, an in-memory channel layer, a Celery broker on kombu's
filesystem transport (no server to install) and a simulated fleet. DATABASE_URL switches to
PostgreSQL; REDIS_URL switches the channel layer and the Celery broker to Redis.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY (and ALLOWED_HOSTS), or DEBUG=1 for development."
        )
    SECRET_KEY = "django-insecure-development-only-key"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
if not ALLOWED_HOSTS:
    if not DEBUG:
        raise ImproperlyConfigured("ALLOWED_HOSTS is not set (comma-separated host names); DEBUG is off.")
    ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "channels",
    "console",
    "fleet",
    "tenants",
    "hardware",
    "simulator",
    "simcontrol",
]

MIDDLEWARE = [
    # Outermost: every non-2xx answer under /api/ becomes a problem (even those of the middleware
    # below, e.g. a disallowed host), and a body over API_MAX_BODY_BYTES is refused before anything.
    "console.api_errors.ProblemMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "console.middleware.CorrelationIdMiddleware",
]

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"
WSGI_APPLICATION = "console.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.ui.context.simulated_fleet",
            ],
        },
    },
]

_SQLITE_URL = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {"default": env.db("DATABASE_URL", default=_SQLITE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server, the Celery worker and the simulator write the same file: wait for locks
    # instead of failing, and take the write lock at BEGIN so read-then-write cannot deadlock.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
elif env.bool("DATABASE_POOL", default=True):
    # A connection pool per process (psycopg_pool), on by default: without it every request opens
    # (and PostgreSQL forks) a new connection, and bench/api.py's mix answered 75 requests a second
    # instead of 230 (its baseline 171 instead of 900). Off behind a pooler such as PgBouncer, with
    # CONN_MAX_AGE for persistent connections instead (these measured slower than the pool: 197-201
    # against 235-241 requests a second, the same hour).
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN", default=2), "max_size": env.int("DATABASE_POOL_MAX", default=20),
        "timeout": 10,
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3" and env.bool("DATABASE_PREPARED", default=True):
    # Parameters bound by the server, and a statement a connection has run 5 times kept prepared
    # (psycopg's own threshold): PostgreSQL then neither parses nor plans it again. Planning the lease
    # document's joins cost more than running them: a GET of one lease cost its backend 1.00 ms of CPU
    # without, 0.40 ms with (bench/api_requests.py's `get_pg_cpu_ms`). Off (Django's default) behind
    # a pooler that cannot keep prepared statements.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"server_side_binding": True, "prepare_threshold": 5})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "console" / "static"]

REDIS_URL = env.str("REDIS_URL", default="")

if REDIS_URL:
    # A socket timeout longer than the layer's 5-second blocking receive (BZPOPMIN): redis-py 8 defaults
    # it to 5 s, which tears every idle websocket down every 5 s (django/channels_redis#422).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery: configured from here by console/celery.py (namespace CELERY_).
CELERY_QUEUE_DIR = VAR_DIR / "celery"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
else:
    CELERY_BROKER_URL = "filesystem://localhost//"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_QUEUE_DIR / "queue"),
        "data_folder_out": str(CELERY_QUEUE_DIR / "queue"),
        "processed_folder": str(CELERY_QUEUE_DIR / "processed"),
        "control_folder": str(CELERY_QUEUE_DIR / "control"),  # kombu's default is ./control
        "store_processed": False,
    }
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=CELERY_BROKER_URL)  # tests: memory://
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE_FILENAME = env.str("CELERY_BEAT_SCHEDULE_FILENAME", default=str(VAR_DIR / "celerybeat-schedule"))
CELERY_TIMEZONE = TIME_ZONE

# The simulated fleet is on unless switched off. Its cluster is served over the Kubernetes API by the
# `simfleet` process (`--kube-port`, default the port of SIM_KUBE_URL); the console reaches it with the
# same KubernetesCluster adapter as a real cluster, at SIM_KUBE_URL.
SIMULATED_FLEET = env.bool("SIMULATED_FLEET", default=True)
SIM_KUBE_URL = env.str("SIM_KUBE_URL", default="http://127.0.0.1:7690")
KUBE_REQUEST_TIMEOUT_S = env.float("KUBE_REQUEST_TIMEOUT_S", default=10.0)
CLUSTER_ADAPTER = env.str(
    "CLUSTER_ADAPTER",
    default="fleet.cluster.simulated_cluster" if SIMULATED_FLEET else "hardware.kube.KubernetesCluster",
)
AGENT_TLS_DIR = Path(env.str("AGENT_TLS_DIR", default=str(VAR_DIR / "pki")))
AGENT_INSECURE = env.bool("AGENT_INSECURE", default=False)
AGENT_TIMEOUT_S = env.float("AGENT_TIMEOUT_S", default=10.0)
SIM_CLOCK_ACCEL = env.float("SIM_CLOCK_ACCEL", default=60.0)
# Simulated fleet only: how long a tenant's container runs before it exits by itself (simulated
# seconds; `simfleet --workload-seconds`). 0, the default: until its lease is released, as a tenant's
# service would; the workload generator (simcontrol) gives its leases lifetimes by releasing them.
SIM_WORKLOAD_S = env.float("SIM_WORKLOAD_S", default=0.0)

# The REST API (tenants/api, console/api). Tokens first: its `Bearer` challenge makes a missing
# credential a 401. Throttle state lives in the cache: Redis in production, per process otherwise.
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=64 * 1024)
# Threads per web process (console.asgi_http): a few answer requests (the GIL runs one at a time, and
# fewer turns keep latency even: with both workers taking clients, bench/api.py's p99 was about a
# quarter lower at 4 than at 8), many more hold long-polls (`?wait=`), which only sleep.
WEB_THREADS = env.int("WEB_THREADS", default=4)
WEB_WAIT_THREADS = env.int("WEB_WAIT_THREADS", default=64)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["console.api_json.OrjsonRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "console.api_errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_THROTTLE_CLASSES": ["tenants.api.throttles.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "api": env.str("API_RATE", default="6000/min"),
        "create": env.str("API_CREATE_RATE", default="600/min"),
    },
}
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
SYSTEM_FONTS = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
SPECTACULAR_SETTINGS = {
    "TITLE": "GPU Console API",
    "DESCRIPTION": (
        "Containers as a Service on NVLink-partitioned GPU servers. Authenticate with "
        "`Authorization: Bearer gpc_…` (a tenant's or an operator's token). Every non-2xx answer is an "
        "RFC 9457 `application/problem+json` body (the `Problem` component)."
    ),
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The system's fonts: Redoc's own (Montserrat, Roboto) would come from Google Fonts.
    "REDOC_UI_SETTINGS": {
        "theme": {"typography": {"fontFamily": SYSTEM_FONTS, "headings": {"fontFamily": SYSTEM_FONTS}}},
    },
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "console.api_schema.problem_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "LeaseStateEnum": "tenants.states.LeaseState",
        "TenantStateEnum": "tenants.states.TenantState",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# Serve static files from the apps' folders without collectstatic (the embedded default).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# The reconciler runs as a periodic singleton (console.locks keeps a second copy from running).
RECONCILE_EVERY_S = env.float("RECONCILE_EVERY_S", default=15.0)
# The longest predicted VM boot a lease may start with (tenants/constants.py explains the default).
MAX_PREDICTED_BOOT_S = env.float("MAX_PREDICTED_BOOT_S", default=45 * 60)
# How long a lease, allocation or GPU may sit in a step before a reconciler resumes it (a lost task).
RECONCILE_STUCK_AFTER_S = env.float("RECONCILE_STUCK_AFTER_S", default=30.0)
# How stale a process's in-memory placement index may grow before it looks for other processes'
# changes (by fingerprint, reading again only the servers that changed, and a rolling slice in full:
# fleet/placement_live.py); its own changes are looked for at once, and a refusal always looks first.
PLACEMENT_INDEX_MAX_AGE_S = env.float("PLACEMENT_INDEX_MAX_AGE_S", default=2.0)
# The workload generator (simcontrol): how often it issues due requests and releases due leases.
WORKLOAD_TICK_S = env.float("WORKLOAD_TICK_S", default=5.0)
CELERY_BEAT_SCHEDULE = {
    "reconcile-fleet": {"task": "fleet.tasks.reconcile", "schedule": RECONCILE_EVERY_S},
    "reconcile-leases": {"task": "tenants.tasks.reconcile", "schedule": RECONCILE_EVERY_S},
    "workload-generator": {"task": "simcontrol.tasks.generator_tick", "schedule": WORKLOAD_TICK_S},
}
