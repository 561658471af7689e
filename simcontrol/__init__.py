"""Steering the simulated fleet from the console: the simulator panel's controls (faults, agents,
fabric managers, the clock) sent to the `simfleet` process over SimAdmin gRPC, and the workload
generator, whose leases go through the tenants' own request and release services."""
