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

# Guest RAM of a lease's VM, as the Kata runtime class sizes it (the simulated cluster uses the same).
GUEST_RAM_GIB = 64

# Boot limits; settings of the same names override them (`tenants.orchestration.boot_limits`).
# A lease whose VM is predicted to boot longer than this on the server it was placed on is not
# started: it ends `failed` with the reason (BOOT_TOO_SLOW) before any pod is created.
# 45 min: the seeds' 8-GPU boot on an old host (≈ 29 min predicted) still runs; an H200 8-GPU VM on
# such a host (≈ 55 min) does not.
MAX_PREDICTED_BOOT_S = 45 * 60
# The pod's start-up timeout: prediction × factor + extra seconds.
BOOT_TIMEOUT_FACTOR = 1.5
BOOT_TIMEOUT_EXTRA_S = 120
BOOT_TOO_SLOW = "BootTooSlow"
