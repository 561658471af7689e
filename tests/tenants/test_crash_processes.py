"""Crashes with real processes, as an operator would cause them: the simulated fleet (agents and the
Kubernetes API) in its own process, a Celery worker, Celery beat running both reconcilers, the node
watcher following boots and health, all on PostgreSQL and Redis. The worker is SIGKILLed while
leases boot, and again while they are cleaned; a fresh worker takes over. Afterwards every lease is
running or cleanly finished, no VM runs without a lease, no GPU is quarantined because of the
crash, and the tenant's next lease runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from fleet.models import Gpu, Server
from fleet.states import GpuState
from hardware.agent_client import AgentClient
from hardware.types import VmState
from tenants.models import Lease
from tenants.states import LeaseState

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BROKER = "redis://127.0.0.1:6379/7"  # its own Redis database: nothing else's queue
SETTLE_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """The product's processes, started as `make run` starts them, with the test's database."""

    def __init__(self, tmp: Path) -> None:
        db = connection.settings_dict
        self.kube_port, self.port_base = _free_port(), _free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
                            f"{db['NAME']}",
            "REDIS_URL": BROKER, "CELERY_BROKER_URL": BROKER, "AGENT_INSECURE": "true", "DEBUG": "1",
            "SIM_KUBE_URL": f"http://127.0.0.1:{self.kube_port}", "RECONCILE_EVERY_S": "1",
            "RECONCILE_STUCK_AFTER_S": "2", "CELERY_BEAT_SCHEDULE_FILENAME": str(tmp / "beat-schedule"),
            "SIM_WORKLOAD_S": "0",  # containers run until their lease is released
        }
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *argv: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def fleet(self) -> None:
        self.start("fleet", PYTHON, "manage.py", "simfleet", "--servers", "2", "--accel", "20", "--insecure",
                   "--port-base", str(self.port_base), "--kube-port", str(self.kube_port), "--racks", "1")

    def worker(self, name: str = "worker") -> None:
        self.start(name, PYTHON, "-m", "celery", "-A", "console", "worker", "--pool", "threads",
                   "--concurrency", "8", "--loglevel", "INFO", "--without-heartbeat", "--without-mingle",
                   "--without-gossip", "-n", f"{name}@%h")

    def nodewatch(self) -> None:
        self.start("nodewatch", PYTHON, "manage.py", "nodewatch", "--rescan", "0.5")

    def beat(self) -> None:
        self.start("beat", PYTHON, "-m", "celery", "-A", "console", "beat", "--loglevel", "INFO")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def cli(self, *args: str) -> str:
        out = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                             text=True, timeout=60, check=True)
        return out.stdout

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-6000:]}" for p in sorted(self.tmp.glob("*.log")))


def _wait(predicate, what: str, processes: Processes, timeout: float = SETTLE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    from fleet.models import Allocation

    states = list(Lease.objects.order_by("pk").values_list("pk", "state", "failure_reason"))
    gpus = list(Gpu.objects.exclude(state=GpuState.FREE).values_list("server__hostname", "module_id", "state",
                                                                      "quarantine_reason"))
    allocations = list(Allocation.objects.values_list("pk", "state", "cleaning_at"))
    pytest.fail(f"timed out waiting for {what}: leases {states}, GPUs not free {gpus}, allocations "
                f"{allocations}\n{processes.logs()}")


def _states() -> list[str]:
    return list(Lease.objects.order_by("pk").values_list("state", flat=True))


def _running_vms() -> dict[str, str]:
    """Every VM that runs on the simulated nodes: VM id → node."""
    vms = {}
    for server in Server.objects.all():
        with AgentClient(server.agent_endpoint, node=server.hostname, insecure=True) as agent:
            for vm in agent.sim_admin().list_vms():
                if vm.state in (VmState.BOOTING, VmState.RUNNING):
                    vms[vm.vm_id] = server.hostname
    return vms


@pytest.fixture
def processes(transactional_db, tmp_path):
    import redis

    redis.Redis.from_url(BROKER).flushdb()
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()
        redis.Redis.from_url(BROKER).flushdb()


def test_worker_killed_while_leases_boot_and_again_while_they_clean(processes):
    processes.fleet()
    _wait(lambda: Server.objects.count() == 2, "the fleet to register", processes)
    processes.worker()
    processes.beat()
    processes.nodewatch()
    for gpus in (2, 1, 4):
        processes.cli("lease", "request", "--tenant", "acme", "--gpus", str(gpus))
    _wait(lambda: LeaseState.BOOTING in _states(), "a lease to boot", processes)

    processes.kill("worker")  # SIGKILL while the leases boot
    processes.worker("worker2")
    _wait(lambda: set(_states()) == {LeaseState.RUNNING}, "every lease to run", processes)

    for lease_id in Lease.objects.values_list("pk", flat=True):
        processes.cli("lease", "release", str(lease_id))
    _wait(lambda: {LeaseState.SCRUBBING, LeaseState.LEVELING} & set(_states())
          or Gpu.objects.filter(state__in=[GpuState.SCRUBBING, GpuState.LEVELING]).exists(),
          "the clean-up to start", processes)
    processes.kill("worker2")  # SIGKILL while the GPUs are cleaned
    processes.worker("worker3")
    _wait(lambda: set(_states()) == {LeaseState.RELEASED}, "every lease to be released", processes)
    _wait(lambda: Gpu.objects.exclude(state=GpuState.FREE).count() == 0, "every GPU to be free", processes)

    assert not Gpu.objects.filter(state=GpuState.QUARANTINED).exists()
    assert _running_vms() == {}  # no VM without a lease
    processes.cli("lease", "request", "--tenant", "acme", "--gpus", "2")
    _wait(lambda: Lease.objects.order_by("-pk").first().state == LeaseState.RUNNING, "a new lease to run",
          processes)
    [vm] = _running_vms()
    assert vm.endswith(Lease.objects.order_by("-pk").first().pod_name)
