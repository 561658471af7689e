"""The protobuf converter is a lossless round trip for every type that crosses the wire."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hardware.agent import convert
from hardware.types import (
    BootPhaseEvent,
    ClockInfo,
    FirmwareStatus,
    GpuHolder,
    HealthEvent,
    HealthKind,
    PartitionInfo,
    ScrubProgress,
    VmInfo,
    VmState,
)
from simulator.host import SimHost

AT = datetime(2026, 11, 22, 19, 0, 0, 123456, tzinfo=UTC)
LATER = datetime(2026, 11, 22, 19, 30, 0, tzinfo=UTC)
PHASE = BootPhaseEvent("vm", "ram_pinning", AT, LATER, "64 GiB")


@pytest.mark.parametrize(
    ("value", "to_pb", "from_pb"),
    [
        (PartitionInfo(3, True, (1, 3), 36), convert.partition_to_pb, convert.partition_from_pb),
        (ScrubProgress(2, "verify", 75.0, "x", True, False), convert.scrub_to_pb, convert.scrub_from_pb),
        (FirmwareStatus(1, "a", "b", False), convert.firmware_to_pb, convert.firmware_from_pb),
        (
            HealthEvent("h", 4, HealthKind.XID, AT, xid=79, action="drain_and_reboot_host", message="m"),
            convert.health_to_pb,
            convert.health_from_pb,
        ),
        (
            HealthEvent("h", 4, HealthKind.TEMPERATURE, AT, temperature_c=89.5),
            convert.health_to_pb,
            convert.health_from_pb,
        ),
        (
            HealthEvent("h", 4, HealthKind.ECC, AT, ecc_corrected=0, ecc_uncorrected=3, row_remaps=0, nvlink_errors=0),
            convert.health_to_pb,
            convert.health_from_pb,
        ),
        (
            HealthEvent("h", 0, HealthKind.FABRIC_MANAGER_RESTARTED, AT, message="waiting 60 s"),
            convert.health_to_pb,
            convert.health_from_pb,
        ),
        (PHASE, convert.boot_to_pb, convert.boot_from_pb),
        (BootPhaseEvent("vm", "running", LATER, None, final=True), convert.boot_to_pb, convert.boot_from_pb),
        (VmInfo("vm", "pod", (1, 2), VmState.BOOTING, (PHASE,), ""), convert.vm_to_pb, convert.vm_from_pb),
        (ClockInfo(AT, 60.0), convert.clock_to_pb, convert.clock_from_pb),
        (
            (GpuHolder(4242, "qemu-system-x86", "vm-1"), GpuHolder(7, "python3", "")),
            convert.gpu_holders_to_pb,
            convert.gpu_holders_from_pb,
        ),
        ((), convert.gpu_holders_to_pb, convert.gpu_holders_from_pb),
    ],
)
def test_round_trip(value, to_pb, from_pb):
    assert from_pb(to_pb(value)) == value


@pytest.mark.parametrize("platform", ["hgx-h100-8", "dgx-h100", "hgx-a100-8"])
def test_inventory_round_trip_keeps_absent_switch_mgmt_and_zero_values(platform):
    inv = SimHost("h", platform).inventory()
    assert convert.inventory_from_pb(convert.inventory_to_pb(inv)) == inv


@pytest.mark.parametrize("variant", ["supermicro-nic-shared", "supermicro-host-driver"])
def test_inventory_round_trip_keeps_why_a_gpu_is_not_isolated(variant):
    inv = SimHost("h", "hgx-h100-8", variant).inventory()
    assert [g.module_id for g in inv.gpus if not g.isolated] == [1 if variant.endswith("shared") else 6]
    assert convert.inventory_from_pb(convert.inventory_to_pb(inv)) == inv


def test_an_older_agent_without_the_reason_is_not_read_as_isolated():
    message = convert.inventory_to_pb(SimHost("h", "hgx-h100-8", "supermicro-nic-shared").inventory())
    for gpu in message.gpus:
        gpu.ClearField("isolation_reason")  # what an agent built before the field sends
    gpus = {g.module_id: g for g in convert.inventory_from_pb(message).gpus}
    assert not gpus[1].isolated and gpus[1].isolation_reason == "not alone in its IOMMU group"
    assert all(g.isolated for m, g in gpus.items() if m != 1)
