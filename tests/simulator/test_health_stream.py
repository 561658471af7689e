"""A subscribed client receives an injected Xid within one simulated second."""

from __future__ import annotations

import threading

from hardware.types import HealthKind
from tests.simulator.support import served_host


def test_injected_xid_reaches_subscriber_within_one_simulated_second(pki):
    # 10×: one simulated second is 100 ms of real time, ample for a loopback round trip.
    with served_host(pki, accel=10.0) as (host, client):
        stream = client.watch_health()
        received = {}

        def consume():
            event = next(stream)
            received["event"] = event
            received["at"] = host.clock.seconds()

        reader = threading.Thread(target=consume)
        reader.start()
        injected_at = host.clock.seconds()
        client.sim_admin().inject_xid(4, 119)
        reader.join(timeout=10)
        stream.cancel()
        event = received["event"]
        assert (event.kind, event.xid, event.action) == (HealthKind.XID, 119, "reset_gpu")
        assert received["at"] - injected_at <= 1.0
