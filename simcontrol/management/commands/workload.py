"""`manage.py workload`: the simulated fleet's workload generator from the command line.

    workload start --rate 4 --sizes 1:4,2:3,4:2,8:1 --lifetime 60-300 --tenants 3 --seed 1
    workload start --keep ...     keep a running generator; resume a stopped one with its saved
                                  parameters; only a never-configured one takes these (`make run`)
    workload stop | status | tick
    workload schedule --count 10  the first requests of the schedule these parameters give
"""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from console.audit import Actor
from console.errors import DomainError
from console.models import Source
from simcontrol import generator
from simcontrol.schedule import Params, format_sizes, parse_sizes, schedule


def _lifetime(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise CommandError(f"--lifetime {text!r}: give seconds as MIN-MAX, e.g. 60-300") from None


class Command(BaseCommand):
    help = "Start, stop or inspect the workload generator of the simulated fleet."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["start", "stop", "status", "tick", "schedule"])
        d = generator.DEFAULT_PARAMS
        parser.add_argument("--rate", type=float, default=d.rate_per_min, help="requests per minute")
        parser.add_argument("--sizes", default=format_sizes(d.sizes), help="GPUs:weight, … (1:4,2:3,4:2,8:1)")
        parser.add_argument("--lifetime", default=f"{d.lifetime_min_s}-{d.lifetime_max_s}", help="seconds MIN-MAX")
        parser.add_argument("--tenants", type=int, default=d.tenants)
        parser.add_argument("--quota", type=int, default=32, help="GPU quota of the tenants it opens")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--keep", action="store_true", help="keep or resume what is configured (make run)")
        parser.add_argument("--count", type=int, default=10)

    def handle(self, *args, **opts):
        actor = Actor.system("cli", source=Source.CLI)
        try:
            sizes = parse_sizes(opts["sizes"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        low, high = _lifetime(opts["lifetime"])
        params = Params(rate_per_min=opts["rate"], sizes=sizes, lifetime_min_s=low, lifetime_max_s=high,
                        tenants=opts["tenants"])
        try:
            if opts["action"] == "start":
                if opts["keep"]:
                    sim = generator.generator_ensure_running(defaults=params, seed=opts["seed"], actor=actor,
                                                             tenant_quota=opts["quota"])
                else:
                    sim = generator.generator_start(params=params, seed=opts["seed"], actor=actor,
                                                    tenant_quota=opts["quota"])
                self._status(sim)
            elif opts["action"] == "stop":
                self._status(generator.generator_stop(actor=actor))
            elif opts["action"] == "tick":
                self.stdout.write(str(generator.generator_tick()))
            elif opts["action"] == "schedule":
                if errors := params.errors():
                    raise CommandError("; ".join(errors.values()))
                for a in schedule(opts["seed"], params, opts["count"]):
                    self.stdout.write(f"#{a.index} at {a.at_s:8.1f} s  {a.gpu_count} GPU(s) for "
                                      f"{generator.tenant_name(a.tenant)}, lifetime {a.lifetime_s} s")
            else:
                self._status(generator.simulation())
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        except DomainError as exc:
            raise CommandError(str(exc)) from exc

    def _status(self, sim):
        state = "running" if sim.generator_running else "stopped"
        self.stdout.write(
            f"workload generator {state}: {sim.rate_per_min:g}/min, sizes {format_sizes(sim.params.sizes)}, "
            f"lifetime {sim.lifetime_min_s}-{sim.lifetime_max_s} s, {sim.tenants} tenants, seed {sim.seed}; "
            f"requested {sim.requested}, refused {sim.refused}, skipped {sim.skipped}, released {sim.released}"
        )
