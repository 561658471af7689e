"""`manage.py nodewatch`: follow every agent's health stream and the boots holders wait on, until
SIGINT/SIGTERM (fleet/node_watch.py)."""

import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from fleet.node_watch import RESCAN_S, run_node_watch


class Command(BaseCommand):
    help = "Record GPU health and VM boots from the node agents' streams (one asyncio process)."

    def add_arguments(self, parser):
        parser.add_argument("--rescan", type=float, default=RESCAN_S,
                            help="seconds between looks for added or removed servers and new boots")

    def handle(self, *args, **opts):
        if opts["rescan"] <= 0:
            raise CommandError("--rescan must be > 0")
        stop = threading.Event()

        def _stop(signum, frame):
            self.stdout.write(f"{signal.Signals(signum).name}: stopping the node watch")
            stop.set()

        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.stdout.write("watching the nodes' health and boot streams")
            run_node_watch(stop, rescan_s=opts["rescan"])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("node watch stopped")
