"""fmpm command building, output parsing and error mapping, on recorded-shape outputs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hardware.exceptions import (
    AgentTimeout,
    AgentUnavailable,
    FailedPrecondition,
    HardwareError,
    InvalidArgument,
    NotFound,
    PartitionInUse,
)
from hardware.linux.fabric_manager import FabricManager, RunResult, fm_return_code, parse_partition_list
from hardware.platforms import HGX_A100, HGX_H100

FIXTURES = Path(__file__).parent / "fixtures" / "fmpm"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


class Recorder:
    """A runner that answers from fixtures and remembers the argv it was given."""

    def __init__(self, *answers: RunResult) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def __call__(self, argv, timeout):
        self.calls.append(list(argv))
        return self.answers.pop(0)


def ok(stdout: str = "") -> RunResult:
    return RunResult(returncode=0, stdout=stdout)


def failed(name: str) -> RunResult:
    text = fixture(name)
    code = int(text.rsplit("fmReturn:", 1)[1]) if "fmReturn:" in text else -9
    return RunResult(returncode=code & 0xFF, stdout=text)


@pytest.mark.parametrize(
    ("name", "platform", "active"),
    [
        ("list_h100_singles_active.json", HGX_H100, set(range(7, 15))),
        ("list_h100_none_active.json", HGX_H100, set()),
        ("list_a100_pairs_active.json", HGX_A100, {7, 8, 9, 10}),
    ],
)
def test_parses_partition_lists(name, platform, active):
    partitions = parse_partition_list(fixture(name))
    assert [p.partition_id for p in partitions] == [p.id for p in platform.partitions]
    for got, spec in zip(partitions, platform.partitions, strict=True):
        assert got.gpu_module_ids == spec.gpus
        assert got.nvlinks == spec.nvlinks
        assert got.active == (spec.id in active)


@pytest.mark.parametrize("text", ["", "Failed to get partition", '{"partitionInfo": [{"partitionId": 0}]}'])
def test_unparseable_list_is_an_error(text):
    with pytest.raises(HardwareError):
        parse_partition_list(text)


def test_commands():
    runner = Recorder(ok(fixture("list_h100_none_active.json")), ok(), ok())
    fm = FabricManager(runner=runner)
    fm.list_partitions()
    fm.activate(3)
    fm.deactivate(3)
    assert runner.calls == [["fmpm", "-l"], ["fmpm", "-a", "3"], ["fmpm", "-d", "3"]]


def test_connection_flags():
    tcp = FabricManager(binary="/opt/fm/fmpm", hostname="192.168.122.10")
    assert tcp.command("-l") == ["/opt/fm/fmpm", "--hostname", "192.168.122.10", "-l"]
    unix = FabricManager(unix_socket="/run/fm/fm.sock")
    assert unix.command("-a", "0") == ["fmpm", "--unix-domain-socket", "/run/fm/fm.sock", "-a", "0"]
    with pytest.raises(InvalidArgument):
        FabricManager(hostname="h", unix_socket="/s")


def test_set_activated_list_is_sent_and_checked():
    runner = Recorder(ok(), ok(fixture("list_h100_singles_active.json")))
    FabricManager(runner=runner).set_activated([14, 7, 8, 9, 10, 11, 12, 13, 7])
    assert runner.calls[0] == ["fmpm", "--set-activated-list", "7,8,9,10,11,12,13,14"]
    assert runner.calls[1] == ["fmpm", "-l"]


def test_set_activated_list_that_did_not_take_is_an_error():
    runner = Recorder(ok(), ok(fixture("list_h100_none_active.json")))
    with pytest.raises(HardwareError, match="reports active partitions"):
        FabricManager(runner=runner).set_activated([0])


@pytest.mark.parametrize(
    ("op", "name", "exc"),
    [
        ("activate", "activate_in_use.txt", PartitionInUse),
        ("activate", "activate_bad_param.txt", NotFound),
        ("activate", "activate_invalid_id.txt", NotFound),
        ("activate", "activate_not_supported.txt", FailedPrecondition),
        ("activate", "activate_version_mismatch.txt", FailedPrecondition),
        ("activate", "activate_timeout.txt", AgentTimeout),
        ("activate", "activate_generic.txt", AgentUnavailable),
        ("activate", "connect_failed.txt", AgentUnavailable),
        ("deactivate", "deactivate_not_active.txt", FailedPrecondition),
        ("list", "list_not_configured.txt", AgentUnavailable),
        ("set", "set_activated_failed.txt", AgentUnavailable),
    ],
)
def test_error_kinds(op, name, exc):
    fm = FabricManager(runner=Recorder(failed(name)))
    call = {
        "activate": lambda: fm.activate(99),
        "deactivate": lambda: fm.deactivate(5),
        "list": fm.list_partitions,
        "set": lambda: fm.set_activated([1, 2]),
    }[op]
    with pytest.raises(exc) as err:
        call()
    assert fixture(name).strip() in str(err.value)


def test_in_use_is_a_failed_precondition_and_not_configured_is_retryable():
    assert issubclass(PartitionInUse, FailedPrecondition)
    with pytest.raises(AgentUnavailable) as err:
        FabricManager(runner=Recorder(failed("list_not_configured.txt"))).list_partitions()
    assert err.value.retryable


def test_return_code_from_exit_status_when_nothing_printed():
    assert fm_return_code(RunResult(returncode=249, stdout="")) == -7
    assert fm_return_code(RunResult(returncode=1, stdout="")) == 1


def test_bad_partition_ids_never_reach_fmpm():
    runner = Recorder()
    fm = FabricManager(runner=runner)
    for bad in (-1, True, "3"):
        with pytest.raises(InvalidArgument):
            fm.activate(bad)
    assert runner.calls == []


def test_timeout_and_missing_binary():
    def slow(argv, timeout):
        raise subprocess.TimeoutExpired(argv, timeout)

    def missing(argv, timeout):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    with pytest.raises(AgentTimeout):
        FabricManager(runner=slow).list_partitions()
    with pytest.raises(AgentUnavailable, match="cannot run fmpm"):
        FabricManager(runner=missing).list_partitions()


def test_default_runner_runs_a_process(tmp_path):
    fake = tmp_path / "fmpm"
    fake.write_text(f"#!/bin/sh\ncat {FIXTURES / 'activate_in_use.txt'}\nexit 249\n")
    fake.chmod(0o755)
    with pytest.raises(PartitionInUse):
        FabricManager(binary=str(fake)).activate(0)


def test_probe_reads_not_configured_as_waiting_for_the_list():
    from hardware.linux.fabric_manager import FmProbe

    def probe(*answers):
        return FabricManager(runner=Recorder(*answers)).probe()

    assert probe(ok(fixture("list_h100_singles_active.json"))) is FmProbe.RUNNING
    assert probe(failed("list_not_configured.txt")) is FmProbe.AWAITING_ACTIVATED_LIST
    assert probe(failed("connect_failed.txt")) is FmProbe.UNREACHABLE
    assert FabricManager(runner=lambda argv, timeout: (_ for _ in ()).throw(OSError("gone"))).probe() is (
        FmProbe.UNREACHABLE)


def test_restart_detector_reports_each_restart_once():
    from datetime import UTC, datetime

    from hardware.linux.fabric_manager import RestartDetector
    from hardware.types import HealthKind

    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    answers = [
        ok(fixture("list_h100_singles_active.json")),  # running
        failed("list_not_configured.txt"),  # restarted: waiting for the list → event
        failed("list_not_configured.txt"),  # still waiting: nothing new
        ok(fixture("list_h100_singles_active.json")),  # told: running again
        failed("connect_failed.txt"),  # down while it restarts
        failed("list_not_configured.txt"),  # waiting again → event
    ]
    detector = RestartDetector(FabricManager(runner=Recorder(*answers)), "node-1", now=lambda: at)
    events = [detector.poll() for _ in answers]
    assert [i for i, e in enumerate(events) if e is not None] == [1, 5]
    event = events[1]
    assert (event.hostname, event.module_id, event.kind, event.at) == (
        "node-1", 0, HealthKind.FABRIC_MANAGER_RESTARTED, at)
    assert "SetActivatedPartitions" in event.message
