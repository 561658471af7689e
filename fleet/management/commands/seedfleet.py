"""`manage.py seedfleet`: create simulated-looking servers from platform data. Idempotent."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from console.audit import Actor
from console.models import Source
from fleet.registration import ServerSpec, free_slot, server_register_from_platform
from hardware.platforms import PLATFORMS, PlatformError, get_platform

# The release a seeded server records for its --host-kernel (what its VMs are predicted to boot on).
SEEDED_KERNELS = {"old": "5.15.0-105-generic", "fixed": "6.12.9"}


class Command(BaseCommand):
    help = "Create N servers with realistic BDFs, IOMMU groups, serials and firmware (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--servers", type=int, default=8)
        parser.add_argument("--platform", default="hgx-h100-8", help=f"one of {', '.join(PLATFORMS)}")
        parser.add_argument("--variant", default=None, help="board variant (default: the platform's first)")
        parser.add_argument("--racks", type=int, default=2)
        parser.add_argument("--prefix", default="gpu", help="host name prefix")
        parser.add_argument("--host-kernel", default="old", choices=["old", "fixed"])
        parser.add_argument("--plug-mode", default="hot", choices=["hot", "cold"])

    def handle(self, *args, **opts):
        if opts["servers"] < 0 or opts["racks"] < 1:
            raise CommandError("--servers must be ≥ 0 and --racks ≥ 1")
        try:
            platform = get_platform(opts["platform"])
            variant = platform.variant(opts["variant"] or platform.variants[0].key)
        except PlatformError as exc:
            raise CommandError(str(exc)) from exc
        actor = Actor.system("seedfleet", source=Source.CLI)
        per_rack = -(-opts["servers"] // opts["racks"]) if opts["servers"] else 1
        created = 0
        for i in range(opts["servers"]):
            rack, slot = divmod(i, per_rack)
            hostname = f"{opts['prefix']}-{platform.key}-{i + 1:04d}"
            rack_name = f"{opts['prefix']}-r{rack + 1:02d}"
            slot = free_slot(rack_name, slot + 1, hostname)
            spec = ServerSpec(
                hostname=hostname,
                platform=platform.key,
                variant=variant.key,
                rack=rack_name,
                slot=slot,
                host_kernel=opts["host_kernel"],
                host_kernel_version=SEEDED_KERNELS[opts["host_kernel"]],
                plug_mode=opts["plug_mode"],
            )
            try:
                _, was_created = server_register_from_platform(spec=spec, actor=actor)
            except ValidationError as exc:
                raise CommandError(f"{spec.hostname}: {'; '.join(exc.messages)}") from exc
            created += was_created
        self.stdout.write(f"{created} server(s) created, {opts['servers'] - created} already present")
