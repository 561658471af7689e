"""The simulated hardware behind the node agent's protocol: hosts, PCI tree, fabric manager, boots, faults.

Imports only `hardware` (never Django, fleet, tenants or console), so a simulated fleet exercises
the same agent and client code as a real one.
"""
