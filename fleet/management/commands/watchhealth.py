"""`manage.py watchhealth`: follow every node agent's health stream until SIGINT/SIGTERM."""

import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from fleet.health_watch import RESCAN_S, watch_fleet_health


class Command(BaseCommand):
    help = "Record GPU health (Xids, ECC, row remaps, temperature) from the agents and act on it."

    def add_arguments(self, parser):
        parser.add_argument("--rescan", type=float, default=RESCAN_S,
                            help="seconds between looks for added or removed servers")

    def handle(self, *args, **opts):
        if opts["rescan"] <= 0:
            raise CommandError("--rescan must be > 0")
        stop = threading.Event()

        def _stop(signum, frame):
            self.stdout.write(f"{signal.Signals(signum).name}: stopping the health watch")
            stop.set()

        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.stdout.write("watching GPU health")
            watch_fleet_health(stop, rescan_s=opts["rescan"])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("health watch stopped")
