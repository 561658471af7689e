"""Constants of the tenants app."""

# The kind of fleet allocation holder a lease is (`lease/<id>`, fleet.holders).
LEASE_HOLDER = "lease"
