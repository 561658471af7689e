"""The fabric-manager model follows the rules in HARDWARE.md."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.exceptions import (
    AgentUnavailable,
    FabricManagerVersionMismatch,
    FailedPrecondition,
    InvalidArgument,
    PartitionInUse,
)
from hardware.platforms import HGX_A100, HGX_H100
from simulator.clock import SimClock
from simulator.fabric_manager import RESTART_WINDOW_S, FabricManager, FmState


def make(busy=None, platform=HGX_H100):
    clock = SimClock(1.0)
    return FabricManager(platform, clock, busy_modules=lambda: busy or {}), clock


def active(fm):
    return {p.partition_id for p in fm.list() if p.active}


def test_lists_the_whole_table():
    fm, _ = make()
    assert [(p.partition_id, p.gpu_module_ids) for p in fm.list()] == [(p.id, p.gpus) for p in HGX_H100.partitions]


def test_activating_an_active_or_overlapping_partition_is_in_use_and_keeps_the_blocker():
    fm, _ = make()
    fm.activate(3)  # GPUs {1,3}
    for blocked in (3, 1, 0, 7, 9):  # itself, parents, and the single GPUs 1 and 3
        with pytest.raises(PartitionInUse, match="in use"):
            fm.activate(blocked)
    assert active(fm) == {3}
    fm.activate(4)  # {2,4} is disjoint
    assert active(fm) == {3, 4}


def test_unknown_id_is_a_bad_parameter():
    fm, _ = make()
    with pytest.raises(InvalidArgument, match="bad parameter"):
        fm.activate(15)
    with pytest.raises(InvalidArgument):
        fm.deactivate(-1)


def test_no_deactivation_while_a_vm_runs_on_its_gpus():
    busy = {}
    fm, _ = make(busy)
    fm.activate(1)
    busy[2] = "vm-7"
    with pytest.raises(FailedPrecondition, match="vm-7"):
        fm.deactivate(1)
    busy.clear()
    fm.deactivate(1)
    assert active(fm) == set()


def test_deactivating_an_inactive_partition_fails():
    fm, _ = make()
    with pytest.raises(FailedPrecondition, match="not active"):
        fm.deactivate(2)


def test_restart_window_accepts_only_set_activated():
    fm, clock = make()
    fm.activate(1)
    fm.restart()
    assert fm.state is FmState.AWAITING_ACTIVATED_LIST
    for call in (fm.list, lambda: fm.activate(2), lambda: fm.deactivate(1)):
        with pytest.raises(AgentUnavailable, match="restarting"):
            call()
    clock.advance(RESTART_WINDOW_S - 5)
    fm.set_activated([1])
    assert fm.state is FmState.RUNNING and active(fm) == {1}


def test_restart_window_timeout_exits():
    fm, clock = make()
    fm.restart()
    clock.advance(RESTART_WINDOW_S + 1)
    assert fm.state is FmState.EXITED
    with pytest.raises(AgentUnavailable, match="not running"):
        fm.set_activated([])
    fm.restart()  # an operator restarts it again
    fm.set_activated([])
    assert fm.list()


def test_set_activated_rejects_overlap():
    fm, _ = make()
    fm.restart()
    with pytest.raises(InvalidArgument):
        fm.set_activated([1, 3])
    assert fm.state is FmState.AWAITING_ACTIVATED_LIST  # a refused list leaves the window open


def test_set_activated_is_refused_while_running_and_keeps_the_active_set():
    busy = {2: "vm-7"}
    fm, _ = make(busy)
    fm.activate(1)  # GPUs 1-4, VM vm-7 on GPU 2
    for ids in ([], [2], [1]):  # `[]` used to clear partition 1 under the running VM
        with pytest.raises(FailedPrecondition, match="only accepted after a fabric-manager restart"):
            fm.set_activated(ids)
    assert fm.state is FmState.RUNNING and active(fm) == {1}


def test_set_activated_is_accepted_once_per_restart():
    fm, _ = make()
    fm.restart()
    fm.set_activated([3])
    with pytest.raises(FailedPrecondition, match="only accepted after a fabric-manager restart"):
        fm.set_activated([])  # the window closed with the first list
    assert active(fm) == {3}


def test_restart_calls_its_listener_and_a_reset_restores_the_boot_configuration():
    heard = []
    fm = FabricManager(HGX_H100, SimClock(1.0), active=[3, 4], on_restart=lambda: heard.append(fm.state))
    assert active(fm) == {3, 4}
    fm.restart()
    assert heard == [FmState.AWAITING_ACTIVATED_LIST]
    fm.reset()
    assert fm.state is FmState.RUNNING and active(fm) == {3, 4}
    with pytest.raises(InvalidArgument):
        FabricManager(HGX_H100, SimClock(1.0), active=[1, 3])


def test_version_check():
    fm, _ = make()
    fm.check_version(fm.version)
    with pytest.raises(FabricManagerVersionMismatch, match="version mismatch"):
        fm.check_version("535.54.03")


def test_a100_table_is_its_own():
    fm, _ = make(platform=HGX_A100)
    fm.activate(1)  # A100's whole-board id
    with pytest.raises(PartitionInUse):
        fm.activate(7)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([p.id for p in HGX_H100.partitions])), max_size=30))
def test_active_partitions_never_share_a_gpu(ops):
    fm, _ = make()
    for activate, pid in ops:
        with contextlib.suppress(PartitionInUse, FailedPrecondition):
            fm.activate(pid) if activate else fm.deactivate(pid)
        gpus = [g for p in fm.list() if p.active for g in p.gpu_module_ids]
        assert len(gpus) == len(set(gpus))
