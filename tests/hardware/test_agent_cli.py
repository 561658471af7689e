"""`python -m hardware.agent --backend sim` starts an agent a client can use."""

from __future__ import annotations

import subprocess
import sys
import time

from hardware.agent_client import AgentClient
from hardware.types import GpuHolder


def test_sim_agent_process_serves_inventory(tmp_path):
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hardware.agent",
            "--backend",
            "sim",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--hostname",
            "cli-node",
            "--platform",
            "dgx-h100",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
        with AgentClient(f"127.0.0.1:{port_file.read_text().strip()}", insecure=True, timeout=5) as client:
            inv = client.get_inventory()
        assert (inv.hostname, inv.platform, inv.variant) == ("cli-node", "dgx-h100", "dgx")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _start(args, port_file):
    proc = subprocess.Popen(
        [sys.executable, "-m", "hardware.agent", *args, "--port-file", str(port_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text().strip():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def test_linux_agent_process_reads_a_simulated_sysfs_and_proc_root(tmp_path):
    from simulator.host import SimHost
    from simulator.sysfs import write_board_map, write_sysfs
    from tests.hardware.fixtures.proc_tree import FakeProc

    host = SimHost("lin-node", "hgx-h100-8", "supermicro")
    write_sysfs(host, tmp_path / "sys")
    write_board_map(host, tmp_path / "board.json")
    group = host.gpus[3].pci.iommu_group
    FakeProc(tmp_path / "proc").add(4242, "qemu-system-x86", ["qemu", "-name", "guest=vm-9"], {7: f"/dev/vfio/{group}"})
    proc, address = _start(
        [
            "--backend",
            "linux",
            "--insecure",
            "--hostname",
            "lin-node",
            "--sysfs-root",
            str(tmp_path / "sys"),
            "--board-map",
            str(tmp_path / "board.json"),
            "--proc-root",
            str(tmp_path / "proc"),
        ],
        tmp_path / "port",
    )
    try:
        with AgentClient(address, insecure=True, timeout=5, node="lin-node") as client:
            inv = client.get_inventory()
            holders = client.gpu_holders(3)
        assert holders == (GpuHolder(4242, "qemu-system-x86", "vm-9"),)
        assert {g.pci.address: g.module_id for g in inv.gpus} == {
            g.pci.address: g.module_id for g in host.inventory().gpus
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_sigterm_as_soon_as_the_agent_is_ready_stops_it_cleanly(tmp_path):
    """A supervisor may stop the agent the moment it says it listens (its port file): the agent's own
    handler runs (exit status 0), not SIGTERM's default action (-15)."""
    proc, _ = _start(["--backend", "sim", "--insecure", "--hostname", "stop-node", "--platform", "dgx-h100"],
                     tmp_path / "port")
    try:
        proc.terminate()
        assert proc.wait(timeout=10) == 0, proc.stdout.read().decode()
    finally:
        proc.kill()
