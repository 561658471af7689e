"""NVIDIA Fabric Manager through its partition tool `fmpm` (NVIDIA/Fabric-Manager-Client).

`fmpm` prints the partition list as jsoncpp "styled" JSON (keys sorted, `isActive` as 0/1, GPU
`uuid`/`pciBusId` empty in shared-NVSwitch mode) and, on failure, one line such as
`Failed to activate partition. fmReturn: -7`, exiting with the fmReturn_t code (so -7 → 249).
The fabric manager runs in the service VM; `fmpm` reaches it over TCP (`--hostname`, default
127.0.0.1:6666) or a unix socket (`--unix-domain-socket`). Those two flags need fmpm ≥ 1.0.1;
without them the command line also suits 1.0.0, which accepts only `-l`, `-a ID`, `-d ID`.

The runner is injectable, so command building and parsing are tested on recorded output.

Restarts. Fabric Manager in resiliency mode comes back from a restart knowing nothing of what was
active and answers every partition call with "not configured" (fmReturn -8) until it is told the
list (`--set-activated-list`), for 60 s, then exits. The agent cannot be told of a restart, so it
looks: `probe()` runs `fmpm -l` and reads -8 as waiting for the list, and `RestartDetector`
turns probes into one HealthKind.FABRIC_MANAGER_RESTARTED event per restart (when it starts
waiting), which LinuxHost puts on its health stream (module id 0) so the console replays at once.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from hardware.exceptions import (
    AgentTimeout,
    AgentUnavailable,
    FailedPrecondition,
    HardwareError,
    InvalidArgument,
    NotFound,
    PartitionInUse,
)
from hardware.types import HealthEvent, HealthKind, PartitionInfo

log = logging.getLogger(__name__)

DEFAULT_BINARY = "fmpm"
DEFAULT_TIMEOUT_S = 10.0  # fmpm itself waits 1 s to connect; a call does not take longer than a few

# fmReturn_t (nv_fm_types.h)
FM_ST_SUCCESS = 0
FM_ST_BADPARAM = -1
FM_ST_GENERIC_ERROR = -2
FM_ST_NOT_SUPPORTED = -3
FM_ST_UNINITIALIZED = -4
FM_ST_TIMEOUT = -5
FM_ST_VERSION_MISMATCH = -6
FM_ST_IN_USE = -7
FM_ST_NOT_CONFIGURED = -8
FM_ST_CONNECTION_NOT_VALID = -9
FM_ST_NVLINK_ERROR = -10

_FM_RETURN = re.compile(r"fmReturn:\s*(-?\d+)")
_CONNECT_FAILED = "Failed to connect to Fabric Manager instance"
_LIB_INIT_FAILED = "Failed to initialize Fabric Manager API interface library"
_INVALID_ID = "Invalid Partition ID"
_INVALID_ARG = ("Invalid argument", "Invalid input", "Invalid partition Id")


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str = ""


# (argv, timeout seconds) → RunResult; raises subprocess.TimeoutExpired / OSError like subprocess.
Runner = Callable[[Sequence[str], float], RunResult]


def subprocess_runner(argv: Sequence[str], timeout: float) -> RunResult:
    """Run fmpm for real."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    return RunResult(returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)


def fm_return_code(result: RunResult) -> int:
    """The fmReturn_t of a failed run: from its message when printed, else from the exit status."""
    match = _FM_RETURN.search(result.stdout)
    if match:
        return int(match.group(1))
    code = result.returncode
    return code - 256 if code > 127 else code  # exit(-7) reaches us as 249


def error_for(op: str, result: RunResult, partition_id: int | None = None) -> HardwareError:
    """Map a failed fmpm run to the hardware boundary's exceptions."""
    text = (result.stdout + result.stderr).strip()
    what = f"fmpm {op}" + (f" {partition_id}" if partition_id is not None else "")
    message = f"{what}: {text or f'exit status {result.returncode}'}"
    if _CONNECT_FAILED in text or _LIB_INIT_FAILED in text:
        return AgentUnavailable(message)
    if _INVALID_ID in text:
        return NotFound(message)
    if any(marker in text for marker in _INVALID_ARG):
        return InvalidArgument(message)
    code = fm_return_code(result)
    if code == FM_ST_IN_USE:
        return PartitionInUse(message)
    if code == FM_ST_BADPARAM:
        # For -a/-d the only parameter is the id: an id the table does not have.
        return NotFound(message) if partition_id is not None else InvalidArgument(message)
    if code in (FM_ST_NOT_CONFIGURED, FM_ST_CONNECTION_NOT_VALID):
        # Still initialising, or restarting and waiting for --set-activated-list: retry later.
        return AgentUnavailable(message)
    if code == FM_ST_TIMEOUT:
        return AgentTimeout(message)
    if code == FM_ST_UNINITIALIZED and op == "deactivate":
        # What fmDeactivateFabricPartition answers for a partition that is not active.
        return FailedPrecondition(f"{message} (partition not active)")
    if code == FM_ST_UNINITIALIZED:
        return AgentUnavailable(message)
    if code == FM_ST_NOT_SUPPORTED:
        return FailedPrecondition(f"{message} (fabric manager not in shared NVSwitch mode)")
    if code == FM_ST_VERSION_MISMATCH:
        return FailedPrecondition(f"{message} (fmpm and fabric manager versions differ)")
    if code == FM_ST_GENERIC_ERROR:
        return AgentUnavailable(message)
    return HardwareError(message)


def parse_partition_list(text: str) -> list[PartitionInfo]:
    """Parse `fmpm -l` output into PartitionInfo rows (NVLinks: the GPUs' available links summed)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HardwareError(f"fmpm -l printed something that is not JSON: {exc}") from None
    try:
        rows = data["partitionInfo"]
        partitions = [_parse_partition(row) for row in rows]
    except (KeyError, TypeError, ValueError) as exc:
        raise HardwareError(f"fmpm -l JSON has an unexpected shape: {exc!r}") from None
    declared = data.get("numPartitions")
    if declared is not None and declared != len(partitions):
        raise HardwareError(f"fmpm -l says {declared} partitions but lists {len(partitions)}")
    return partitions


def _parse_partition(row: dict[str, Any]) -> PartitionInfo:
    gpus = row["gpuInfo"]
    if len(gpus) != int(row["numGpus"]):
        raise ValueError(f"partition {row['partitionId']}: numGpus disagrees with gpuInfo")
    return PartitionInfo(
        partition_id=int(row["partitionId"]),
        active=bool(row["isActive"]),  # jsoncpp prints the C unsigned int: 0 or 1
        gpu_module_ids=tuple(int(gpu["physicalId"]) for gpu in gpus),
        nvlinks=sum(int(gpu.get("numNvLinksAvailable", 0)) for gpu in gpus),
    )


class FmProbe(StrEnum):
    RUNNING = "running"
    AWAITING_ACTIVATED_LIST = "awaiting_activated_list"  # restarted: wants --set-activated-list
    UNREACHABLE = "unreachable"  # not answering (down, restarting, fmpm missing) or another error


class FabricManager:
    """Partition calls to the fabric manager, one fmpm process each."""

    def __init__(
        self,
        *,
        binary: str = DEFAULT_BINARY,
        hostname: str | None = None,
        unix_socket: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        runner: Runner = subprocess_runner,
    ) -> None:
        if hostname and unix_socket:
            raise InvalidArgument("give the fabric manager's hostname or its unix socket, not both")
        self.binary = binary
        self.hostname = hostname
        self.unix_socket = unix_socket
        self.timeout_s = timeout_s
        self.runner = runner

    def command(self, *args: str) -> list[str]:
        """The argv for one fmpm call."""
        argv = [self.binary]
        if self.unix_socket:
            argv += ["--unix-domain-socket", self.unix_socket]
        elif self.hostname:
            argv += ["--hostname", self.hostname]
        return [*argv, *args]

    def list_partitions(self) -> list[PartitionInfo]:
        """Every partition the fabric manager supports, as it reports them (degraded GPUs included)."""
        return parse_partition_list(self._run("list", ["-l"]).stdout)

    def activate(self, partition_id: int) -> None:
        self._run("activate", ["-a", str(_check_id(partition_id))], partition_id)

    def deactivate(self, partition_id: int) -> None:
        self._run("deactivate", ["-d", str(_check_id(partition_id))], partition_id)

    def set_activated(self, partition_ids: Iterable[int]) -> None:
        """After a fabric-manager restart: tell it which partitions are still active.

        Checked against a fresh list afterwards, because some fmpm builds mis-parse the
        comma-separated list (1.0.1 never advances its count) and would report success anyway.
        """
        ids = sorted({_check_id(pid) for pid in partition_ids})
        self._run("set-activated-list", ["--set-activated-list", ",".join(map(str, ids))])
        active = sorted(p.partition_id for p in self.list_partitions() if p.active)
        if active != ids:
            raise HardwareError(f"fabric manager reports active partitions {active} after setting {ids}")

    def probe(self) -> FmProbe:
        """Where the fabric manager stands, from one `fmpm -l` (never raises)."""
        try:
            result = self.runner(self.command("-l"), self.timeout_s)
        except (subprocess.TimeoutExpired, OSError) as exc:
            log.debug("fabric manager probe: %s", exc)
            return FmProbe.UNREACHABLE
        if result.returncode == 0:
            return FmProbe.RUNNING
        if fm_return_code(result) == FM_ST_NOT_CONFIGURED:
            return FmProbe.AWAITING_ACTIVATED_LIST
        return FmProbe.UNREACHABLE

    def _run(self, op: str, args: list[str], partition_id: int | None = None) -> RunResult:
        argv = self.command(*args)
        try:
            result = self.runner(argv, self.timeout_s)
        except subprocess.TimeoutExpired:
            raise AgentTimeout(f"fmpm {op} ran past {self.timeout_s:g} s") from None
        except OSError as exc:
            raise AgentUnavailable(f"cannot run {self.binary}: {exc}") from None
        if result.returncode != 0:
            error = error_for(op, result, partition_id)
            log.warning("%s failed: %s", " ".join(argv), error)
            raise error
        return result


def _check_id(partition_id: int) -> int:
    # fmpm would stoul() a negative id into a huge one; refuse it here with a clear message.
    if isinstance(partition_id, bool) or not isinstance(partition_id, int) or partition_id < 0:
        raise InvalidArgument(f"partition id must be a non-negative integer, not {partition_id!r}")
    return partition_id


class RestartDetector:
    """One FABRIC_MANAGER_RESTARTED event each time the fabric manager starts waiting for the list.

    `poll()` probes once and returns the event on the edge into AWAITING_ACTIVATED_LIST (also when
    the agent starts and finds it waiting: the console replays then too), else None. A probe that
    finds it running or unreachable re-arms the detector, so the next restart is reported again.
    Two restarts with no probe between that sees it running or down read as one; at LinuxHost's 5 s
    probe interval that needs two restarts within about 5 s.
    """

    def __init__(self, fabric_manager: FabricManager, hostname: str,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.fabric_manager = fabric_manager
        self.hostname = hostname
        self._now = now
        self._awaiting = False

    def poll(self) -> HealthEvent | None:
        awaiting = self.fabric_manager.probe() is FmProbe.AWAITING_ACTIVATED_LIST
        rising = awaiting and not self._awaiting
        self._awaiting = awaiting
        if not rising:
            return None
        log.warning("%s: the fabric manager restarted and waits for the activated partition list", self.hostname)
        return HealthEvent(
            hostname=self.hostname,
            module_id=0,
            kind=HealthKind.FABRIC_MANAGER_RESTARTED,
            at=self._now(),
            message="fabric manager restarted: not configured until SetActivatedPartitions (60 s)",
        )
