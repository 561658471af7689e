"""A node process stops cleanly on SIGTERM or SIGINT, even one sent the moment it says it is ready."""

import signal
import subprocess
import sys

import pytest

PROGRAM = """
import threading, time
from hardware.shutdown import stop_on_signals, wait_for
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # another thread, as gRPC's
stop = stop_on_signals()
print("ready", flush=True)
wait_for(stop)
print("stopped cleanly", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_right_after_ready_stops_it_cleanly(sig):
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0  # the handler ran: not killed by the default action
        assert proc.stdout.read().strip() == "stopped cleanly"
    finally:
        proc.kill()
