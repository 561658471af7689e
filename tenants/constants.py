"""Constants of the tenants app."""

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
