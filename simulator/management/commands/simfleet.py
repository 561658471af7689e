"""`manage.py simfleet`: run a simulated fleet's agents and register it from what they report.

Starts N simulated servers behind the node-agent protocol (mTLS from settings.AGENT_TLS_DIR,
created as a development CA on first use), asks each one GetInventory over gRPC with the same
AgentClient the console uses, upserts Server/Gpu/NvSwitch rows through fleet.inventory, records
the partitions the fabric manager reports, then keeps serving until interrupted.

Next to the agents it serves the simulated cluster over the Kubernetes API on loopback
(`simulator.kube_server.KubeApiServer`, port `--kube-port`, by default the port of
settings.SIM_KUBE_URL, where the console looks for it): the console drives it through the same
`KubernetesCluster` adapter as a real cluster, and the cluster's state lives in this process, so a
console or worker crash loses nothing. A kubeconfig for it is written to `var/sim-kubeconfig.yaml`.

    manage.py simfleet --servers 16 --platform hgx-h100-8 --variant supermicro --accel 60 --port-base 7700 \
        --kube-port 7690
"""

from __future__ import annotations

import signal
import threading
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from console.audit import Actor
from console.models import Source
from fleet.inventory import server_register_from_inventory
from fleet.registration import free_slot
from fleet.services import partitions_record_reported
from hardware.agent_client import AgentClient
from hardware.exceptions import HardwareError
from hardware.platforms import PLATFORMS, PlatformError, get_platform
from hardware.tls import CA_CERT, TlsIdentity, issue_cert, make_dev_ca
from simulator.fleet import DEFAULT_PER_PORT_LIMIT, SimFleet
from simulator.kube_server import KubeApiServer
from simulator.telemetry import DEFAULT_INTERVAL_S

KUBECONFIG_NAME = "sim-kubeconfig.yaml"
CONSOLE_IDENTITY = "console"
FLEET_IDENTITY = "simfleet"


def _identities(insecure: bool) -> tuple[TlsIdentity | None, TlsIdentity | None]:
    """(fleet server identity, console client identity); a development PKI is made if absent."""
    if insecure:
        return None, None
    pki = settings.AGENT_TLS_DIR
    if not (pki / CA_CERT).exists():
        make_dev_ca(pki)
    for name in (CONSOLE_IDENTITY, FLEET_IDENTITY):
        if not (pki / f"{name}.pem").exists():
            issue_cert(pki, name)
    return TlsIdentity.from_dir(pki, FLEET_IDENTITY), TlsIdentity.from_dir(pki, CONSOLE_IDENTITY)


def _features(opts) -> dict:
    """The fleet's host-feature options: the seeded mix, or the same features for every server."""
    if opts["host_kernel"] == "mix":
        return {"feature_mix": True}
    return {"host_kernel": opts["host_kernel"], "plug_mode": opts["plug_mode"]}


class Command(BaseCommand):
    help = "Serve a simulated fleet over the agent protocol and register it from GetInventory."

    def add_arguments(self, parser):
        parser.add_argument("--servers", type=int, default=8)
        parser.add_argument("--platform", default="hgx-h100-8", help=f"one of {', '.join(PLATFORMS)}")
        parser.add_argument("--variant", default=None, help="board variant (default: the platform's first)")
        parser.add_argument("--accel", type=float, default=None, help="simulated seconds per real second")
        parser.add_argument("--port-base", type=int, default=0, help="first port (default: any free port)")
        parser.add_argument(
            "--per-port-limit",
            type=int,
            default=DEFAULT_PER_PORT_LIMIT,
            help="beyond this many servers, serve all through one multiplexed port",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--racks", type=int, default=2)
        parser.add_argument("--prefix", default="sim", help="host name prefix")
        parser.add_argument(
            "--host-kernel",
            default="mix",
            help="mix (default: a realistic mix of host kernels and boot features, from --seed), or one "
            "release for every server (6.8.0-45-generic; old / fixed)",
        )
        parser.add_argument("--plug-mode", default="hot", choices=["hot", "cold"], help="with one --host-kernel")
        parser.add_argument("--fault-rate", type=float, default=0.0, help="random faults per GPU per sim hour")
        parser.add_argument(
            "--telemetry-interval",
            type=float,
            default=DEFAULT_INTERVAL_S,
            help="real seconds between GPU temperature samples on the health streams (0: none)",
        )
        parser.add_argument(
            "--workload-seconds",
            type=float,
            default=None,
            help="simulated seconds a lease's container runs before it exits by itself "
            "(default: SIM_WORKLOAD_S; 0: until the lease is released)",
        )
        parser.add_argument(
            "--insecure", action="store_true", default=None, help="plaintext gRPC (default: settings.AGENT_INSECURE)"
        )
        parser.add_argument(
            "--kube-port",
            type=int,
            default=None,
            help="port of the simulated cluster's Kubernetes API on 127.0.0.1 (default: SIM_KUBE_URL's; 0: any)",
        )
        parser.add_argument("--once", action="store_true", help="register, then stop the agents and exit")

    def handle(self, *args, **opts):
        if opts["servers"] < 1 or opts["racks"] < 1:
            raise CommandError("--servers and --racks must be ≥ 1")
        if (opts["workload_seconds"] or 0) < 0 or opts["fault_rate"] < 0 or opts["telemetry_interval"] < 0:
            raise CommandError("--workload-seconds, --fault-rate and --telemetry-interval must be ≥ 0")
        try:
            platform = get_platform(opts["platform"])
            variant = platform.variant(opts["variant"] or platform.variants[0].key)
        except PlatformError as exc:
            raise CommandError(str(exc)) from exc
        insecure = settings.AGENT_INSECURE if opts["insecure"] is None else opts["insecure"]
        server_tls, console_tls = _identities(insecure)
        fleet = SimFleet(
            opts["servers"],
            platform=platform.key,
            variant=variant.key,
            seed=opts["seed"],
            accel=opts["accel"] or settings.SIM_CLOCK_ACCEL,
            name_prefix=f"{opts['prefix']}-{platform.key}",
            tls=server_tls,
            insecure=insecure,
            per_port_limit=opts["per_port_limit"],
            port_base=opts["port_base"],
            fault_rate_per_gpu_hour=opts["fault_rate"],
            telemetry_interval_s=opts["telemetry_interval"],
            isolate_gpus=True,
            **_features(opts),
        ).start()
        try:
            self._register(fleet, opts, console_tls, insecure)
            if opts["once"]:
                return
            kube = self._serve_cluster(fleet, opts, console_tls, insecure)
            try:
                self.stdout.write(f"serving {len(fleet.hosts)} simulated servers; Ctrl-C stops")
                self._serve_until_signalled()
            finally:
                kube.stop()
        finally:
            fleet.stop()

    def _serve_until_signalled(self) -> None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()

    def _serve_cluster(self, fleet: SimFleet, opts, console_tls: TlsIdentity | None, insecure: bool) -> KubeApiServer:
        """The simulated cluster's Kubernetes API server; its VMs start through SimAdmin as the console's."""
        port = opts["kube_port"]
        if port is None:
            port = urlsplit(settings.SIM_KUBE_URL).port or 7690
        client_options = {"timeout": settings.AGENT_TIMEOUT_S}
        if console_tls is not None:
            client_options["credentials"] = console_tls
        try:
            kube = KubeApiServer.for_fleet(
                fleet,
                insecure=insecure,
                client_options=client_options,
                port=port,
                workload_seconds=settings.SIM_WORKLOAD_S
                if opts["workload_seconds"] is None
                else opts["workload_seconds"],
            ).start()
        except OSError as exc:
            raise CommandError(f"cannot serve the simulated Kubernetes API on port {port}: {exc}") from exc
        path = kube.write_kubeconfig(settings.VAR_DIR / KUBECONFIG_NAME)
        self.stdout.write(f"simulated cluster: Kubernetes API at {kube.url} (kubeconfig {path})")
        return kube

    def _register(self, fleet: SimFleet, opts, console_tls: TlsIdentity | None, insecure: bool) -> None:
        actor = Actor.system("simfleet", source=Source.SIMULATOR)
        per_rack = -(-len(fleet.hosts) // opts["racks"])
        for i, endpoint in enumerate(fleet.endpoints.values()):
            rack_index, slot = divmod(i, per_rack)
            rack = f"{opts['prefix']}-r{rack_index + 1:02d}"
            # The same client the console uses; the node key routes on a multiplexed port.
            with AgentClient(
                endpoint.address, credentials=console_tls, insecure=insecure, node=endpoint.hostname
            ) as client:
                try:
                    inventory = client.get_inventory()
                    reported = {p.partition_id: p.active for p in client.list_partitions()}
                except HardwareError as exc:
                    raise CommandError(f"{endpoint.hostname}: {exc}") from exc
            try:
                result = server_register_from_inventory(
                    inventory=inventory,
                    rack=rack,
                    slot=free_slot(rack, slot + 1, endpoint.hostname),
                    agent_endpoint=endpoint.address,
                    actor=actor,
                    source="simulator",
                )
            except ValidationError as exc:
                raise CommandError(f"{endpoint.hostname}: {exc}") from exc
            partitions_record_reported(server=result.server, reported=reported, actor=actor)
            verb = "registered" if result.created else ("updated" if result.changes else "unchanged")
            self.stdout.write(f"{endpoint.hostname} {endpoint.address} {verb}")
