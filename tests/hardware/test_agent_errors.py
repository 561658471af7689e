"""Status codes ↔ domain exceptions, client retries and deadlines."""

from __future__ import annotations

import threading

import grpc
import pytest

from hardware.agent.status import code_for, exception_for
from hardware.exceptions import (
    AgentTimeout,
    AgentUnavailable,
    FabricManagerVersionMismatch,
    FailedPrecondition,
    GpuBusy,
    HardwareError,
    InvalidArgument,
    NotFound,
    PartitionInUse,
    PermissionDenied,
)
from tests.simulator.support import make_pki, served_host

C = grpc.StatusCode


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (C.UNAVAILABLE, "fabric manager restarting", AgentUnavailable),
        (C.DEADLINE_EXCEEDED, "Deadline Exceeded", AgentTimeout),
        (C.NOT_FOUND, "no GPU", NotFound),
        (C.INVALID_ARGUMENT, "bad parameter", InvalidArgument),
        (C.FAILED_PRECONDITION, "GPU 1 in use by VM x", FailedPrecondition),
        (C.FAILED_PRECONDITION, "in use: partition 3 shares GPUs", PartitionInUse),
        (C.FAILED_PRECONDITION, "version mismatch: client 1, fabric manager 2", FabricManagerVersionMismatch),
        (C.UNAUTHENTICATED, "no certificate", PermissionDenied),
        (C.PERMISSION_DENIED, "not allowed", PermissionDenied),
        (C.INTERNAL, "boom", HardwareError),
    ],
)
def test_status_code_to_exception(code, message, expected):
    exc = exception_for(code, message)
    assert type(exc) is expected
    assert message in str(exc)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (PartitionInUse("in use: x"), C.FAILED_PRECONDITION),
        (FailedPrecondition("x"), C.FAILED_PRECONDITION),
        (NotFound("x"), C.NOT_FOUND),
        (InvalidArgument("x"), C.INVALID_ARGUMENT),
        (AgentTimeout("x"), C.DEADLINE_EXCEEDED),
        (AgentUnavailable("x"), C.UNAVAILABLE),
        (PermissionDenied("x"), C.PERMISSION_DENIED),
        (HardwareError("x"), C.INTERNAL),
    ],
)
def test_exception_to_status_code(exc, code):
    assert code_for(exc) == code


def test_client_retries_unavailable_until_the_fabric_manager_is_back(pki):
    with served_host(pki, accel=1.0) as (host, client):
        client.retries, client.backoff = 6, 0.05
        host.restart_fabric_manager()
        timer = threading.Timer(0.2, lambda: host.set_activated_partitions([]))
        timer.start()
        assert len(client.list_partitions()) == 15  # refused at first, answered after a retry
        timer.join()


def test_retries_are_bounded(pki):
    with served_host(pki, accel=1.0) as (host, client):
        client.retries, client.backoff = 2, 0.01
        host.restart_fabric_manager()
        with pytest.raises(AgentUnavailable, match="restarting"):
            client.activate_partition(0)


def test_deadline_maps_to_agent_timeout(pki):
    with served_host(pki, accel=1.0) as (host, client):
        with pytest.raises(AgentTimeout):
            client.reset_gpu(1, timeout=0.05)  # a reset takes 5 simulated = 5 real seconds here
        host.clock.advance(10)  # let the server's handler finish


def test_a_gpu_under_an_operation_is_busy_and_that_is_worth_a_retry(pki):
    """A scrub still running (e.g. started for a worker that died) answers ABORTED → GpuBusy, which
    is retryable: the next try finds it done, instead of quarantining a GPU over a crash."""
    with served_host(pki, accel=1.0) as (host, client):
        stream = client.scrub_gpu(1)
        assert next(stream).phase == "boot-vm"  # the scrub VM is booting
        with pytest.raises(GpuBusy, match="scrub in progress") as busy:
            list(client.scrub_gpu(1))
        assert busy.value.retryable
        host.activate_partition(7)
        with pytest.raises(GpuBusy, match="scrub in progress"):
            host.start_vm("v", "pod", [1], 8)
        host.clock.set_acceleration(100_000)  # finish the scrub quickly
        assert list(stream)[-1].ok
        host.start_vm("v", "pod", [1], 8)  # free again
