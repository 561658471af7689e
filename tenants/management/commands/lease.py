"""`manage.py lease`: request, release and list leases from the command line (developers, demos)."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from console.audit import Actor
from console.errors import DomainError
from console.models import Source
from tenants import selectors, services
from tenants.models import Lease

DEFAULT_IMAGE = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"


class Command(BaseCommand):
    help = "Request (`request --tenant T --gpus N`), release (`release ID`) or list (`list`) leases."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        req = sub.add_parser("request")
        req.add_argument("--tenant", required=True)
        req.add_argument("--gpus", type=int, default=1)
        req.add_argument("--image", default=DEFAULT_IMAGE)
        rel = sub.add_parser("release")
        rel.add_argument("lease_id", type=int)
        sub.add_parser("list")

    def handle(self, *args, **opts):
        actor = Actor.system("cli", source=Source.CLI)
        try:
            if opts["action"] == "request":
                # An admin's tool: it opens the account of an unknown tenant (requests never do).
                services.tenant_ensure(name=opts["tenant"], actor=actor)
                lease = services.lease_request(
                    tenant_name=opts["tenant"], image=opts["image"], gpu_count=opts["gpus"], actor=actor
                )
                self.stdout.write(f"{lease} {lease.state} {lease.pending_reason}".rstrip())
            elif opts["action"] == "release":
                lease = Lease.objects.filter(pk=opts["lease_id"]).first()
                if lease is None:
                    raise CommandError(f"no lease {opts['lease_id']}")
                lease = services.lease_release(lease=lease, actor=actor)
                self.stdout.write(f"{lease} {lease.state}")
            else:
                for lease in selectors.leases_recent():
                    where = f"{lease.server} p{lease.partition.partition_id}" if lease.allocation_id else "-"
                    self.stdout.write(f"{lease.pk:>5} {lease.tenant} {lease.gpu_count} GPU {lease.state:<12} {where}")
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {', '.join(v)}" for k, v in exc.message_dict.items())) from exc
        except DomainError as exc:
            raise CommandError(str(exc)) from exc
