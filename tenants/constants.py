"""Constants of the tenants app and its API."""

from datetime import timedelta

# The console's roles (auth groups, made by a data migration), least to most.
ROLE_VIEWER, ROLE_SUPPORT, ROLE_ADMIN = "viewer", "support", "admin"
CONSOLE_ROLES = (ROLE_VIEWER, ROLE_SUPPORT, ROLE_ADMIN)

# How long an Idempotency-Key is kept (at least), and after how long a request that never finished
# (its worker died) stops holding its key.
IDEMPOTENCY_TTL = timedelta(hours=48)
IDEMPOTENCY_IN_FLIGHT_STALE = timedelta(minutes=2)
IDEMPOTENCY_KEY_MAX = 255

# `?wait=` long-poll on a lease: at most this many seconds, checked this often.
LEASE_WAIT_MAX_S = 30
LEASE_WAIT_POLL_S = 0.1

MAX_PENDING_SECONDS_MAX = 7 * 24 * 3600

# The kind of fleet allocation holder a lease is (`lease/<id>`, fleet.holders).
LEASE_HOLDER = "lease"
