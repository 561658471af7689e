"""Run a node agent: `python -m hardware.agent --backend linux|sim --listen 127.0.0.1:0 ...`.

mTLS by default (`--tls-dir DIR --tls-name NAME`, files from `python -m hardware.tls`); plaintext
only with `--insecure`. The bound address is printed (and written to `--port-file`), so port 0 works.

`--device-plugin` also runs the kubelet device plugin for `nvidia.com/gpu` in this process, fed
with the leases the console sets (SetGpuLeases): it writes the CDI spec to `--cdi-dir`, serves on
a socket in `--kubelet-dir` and registers with its `kubelet.sock` (again after kubelet restarts).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from hardware import cdi
from hardware.agent.routing import SingleHost
from hardware.agent.server import AgentServer, serve
from hardware.deviceplugin.server import DEFAULT_PLUGIN_DIR, KUBELET_POLL_S
from hardware.deviceplugin.servicer import AllocateMode
from hardware.linux.holders import EVICT_GRACE_S
from hardware.shutdown import stop_on_signals, wait_for
from hardware.tls import TlsIdentity

SIM_BACKEND = "simulator.agent"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hardware.agent", description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("linux", "sim"), required=True)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--tls-dir", type=Path, help="folder with ca.pem, NAME.pem, NAME-key.pem")
    p.add_argument("--tls-name", help="certificate name in --tls-dir (default: --hostname)")
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    p.add_argument("--port-file", type=Path, help="write the bound port here")
    p.add_argument("--hostname", default="sim-node-0001")
    dp = p.add_argument_group("device plugin")
    dp.add_argument("--device-plugin", action="store_true",
                    help="run the kubelet device plugin (nvidia.com/gpu) and write the CDI spec")
    dp.add_argument("--kubelet-dir", type=Path, default=DEFAULT_PLUGIN_DIR,
                    help="the kubelet's device-plugins folder (kubelet.sock; our socket goes here)")
    dp.add_argument("--cdi-dir", type=Path, default=cdi.DEFAULT_DIRECTORY, help="where the CDI spec is written")
    dp.add_argument("--allocate-mode", choices=[m.value for m in AllocateMode], default=AllocateMode.CDI.value,
                    help="what Allocate answers: CDI names, /dev/vfio device specs, or both")
    dp.add_argument("--health-poll", type=float, default=5.0, help="seconds between inventory re-reads")
    dp.add_argument("--kubelet-poll", type=float, default=KUBELET_POLL_S,
                    help="seconds between checks of kubelet.sock (re-register after a kubelet restart)")
    linux = p.add_argument_group("linux backend")
    linux.add_argument("--sysfs-root", type=Path, default=Path("/sys"))
    linux.add_argument("--board-map", type=Path, help="module-id → BDF map recorded for this board")
    linux.add_argument("--proc-root", type=Path, default=Path("/proc"),
                       help="where the processes holding a GPU's VFIO device are found")
    for name, example in (("qemu-version", "9.2.0"), ("guest-kernel", "6.12.8"), ("guest-firmware", "ovmf"),
                          ("init-system", "nvrc")):
        linux.add_argument(f"--{name}", default="",
                           help=f"what the node's Kata configuration boots, e.g. {example} (for the boot prediction)")
    linux.add_argument("--evict-grace", type=float, default=EVICT_GRACE_S,
                       help="seconds between SIGTERM and SIGKILL when evicting a GPU's holders")
    sim = p.add_argument_group("sim backend")
    sim.add_argument("--platform", default="hgx-h100-8")
    sim.add_argument("--variant", default=None)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--accel", type=float, default=60.0, help="simulated seconds per real second")
    sim.add_argument("--host-kernel", default="old", help="a release (6.8.0-45-generic), or old / fixed")
    sim.add_argument("--plug-mode", choices=("hot", "cold"), default="hot")
    sim.add_argument("--iommu-backend", choices=("vfio-type1", "iommufd"), default="vfio-type1")
    sim.add_argument("--hugepages", action="store_true")
    return p


def _serve_linux(args, tls: TlsIdentity | None):
    from hardware.linux.boardmap import BoardMapError, load_board_map
    from hardware.linux.host import VM_FEATURES, LinuxHost

    if args.board_map is None:
        print("the linux backend needs --board-map (module id → BDF, recorded once per board)", file=sys.stderr)
        return None
    try:
        board_map = load_board_map(args.board_map)
    except BoardMapError as exc:
        print(exc, file=sys.stderr)
        return None
    backend = LinuxHost(
        board_map=board_map,
        sysfs_root=args.sysfs_root,
        proc_root=args.proc_root,
        evict_grace_s=args.evict_grace,
        hostname=args.hostname,
        vm_features={name: getattr(args, name) for name in VM_FEATURES},
    )
    return serve(SingleHost(backend, args.hostname), args.listen, tls=tls, insecure=args.insecure)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.insecure == bool(args.tls_dir):
        print("give exactly one of --tls-dir or --insecure", file=sys.stderr)
        return 2
    tls = TlsIdentity.from_dir(args.tls_dir, args.tls_name or args.hostname) if args.tls_dir else None
    if args.backend == "sim":
        # By dotted path, like the settings-chosen adapters: production code never imports the
        # simulator (an import-linter contract); only this explicit choice loads it.
        sim_agent = importlib.import_module(SIM_BACKEND)
        server = sim_agent.serve_from_args(args, tls=tls)
    else:
        server = _serve_linux(args, tls)
        if server is None:
            return 2
    plugin = None
    if args.device_plugin:
        plugin = _start_device_plugin(args, server)
        if plugin is None:
            server.stop()
            return 1
    stop = stop_on_signals()
    print(f"agent {args.hostname} ({args.backend}) listening on {server.address}", flush=True)
    if args.port_file:
        args.port_file.write_text(f"{server.port}\n")
    wait_for(stop)
    if plugin is not None:
        plugin.stop()
    server.stop()
    return 0


def _start_device_plugin(args, server: AgentServer):
    """The device plugin on the agent's host and lease book; None (after a message) if it cannot start."""
    from hardware.deviceplugin.node import NodeDevicePlugin

    resolver = server.resolver
    if not isinstance(resolver, SingleHost):
        print("--device-plugin needs an agent serving one host", file=sys.stderr)
        return None
    plugin = NodeDevicePlugin(
        resolver.backend,
        resolver.leases,
        kubelet_dir=args.kubelet_dir,
        cdi_dir=args.cdi_dir,
        mode=AllocateMode(args.allocate_mode),
        health_poll=args.health_poll,
        kubelet_poll=args.kubelet_poll,
    )
    try:
        plugin.start()
    except Exception as exc:
        print(f"device plugin: {exc}", file=sys.stderr)
        return None
    print(f"device plugin on {plugin.server.socket_path}, CDI spec {plugin.cdi_path}", flush=True)
    return plugin


if __name__ == "__main__":
    sys.exit(main())
