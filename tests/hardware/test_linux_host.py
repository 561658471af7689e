"""LinuxHost end to end over a sysfs tree, recorded fmpm output and libvirt's test driver."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from hardware.backend import HostBackend
from hardware.exceptions import FailedPrecondition, HardwareError, NotFound, PartitionInUse
from hardware.linux.boardmap import board_map_from_variant
from hardware.linux.fabric_manager import FabricManager, RunResult
from hardware.linux.host import LinuxHost
from hardware.linux.journal import EventJournal
from hardware.linux.pci import normalize_address
from hardware.linux.records import GpuRecordStore, GpuReport
from hardware.linux.service_vm import ServiceVms
from hardware.linux.sysfs import SysfsPci
from hardware.platforms import PLATFORMS
from hardware.types import DeviceKind, HealthKind
from tests.hardware.fixtures.guest import ScriptedGuest
from tests.hardware.fixtures.libvirt_node import write_test_node
from tests.hardware.fixtures.sysfs_tree import FakeKernel, build_platform_tree

FIXTURES = Path(__file__).parent / "fixtures" / "fmpm"
VARIANTS = [(p.key, v.key) for p in PLATFORMS.values() for v in p.variants]


def make_host(tmp_path, platform_key="hgx-h100-8", variant_key="supermicro", *, guest=None, runner=None, **kw):
    tree = build_platform_tree(tmp_path / "sys", PLATFORMS[platform_key], variant_key, **kw)
    found = SysfsPci(tree.root).discover()
    functions = [g.function for g in found.gpus] + list(found.nvswitches) + list(found.switch_mgmt)
    vms = ServiceVms(write_test_node(tmp_path / "node.xml", functions))
    kernel = FakeKernel(tree)
    host = LinuxHost(
        board_map=board_map_from_variant(platform_key, variant_key),
        sysfs_root=tree.root,
        fabric_manager=FabricManager(runner=runner or (lambda argv, timeout: RunResult(0, ""))),
        service_vms=vms,
        guest=guest,
        records=GpuRecordStore(tmp_path / "records"),
        journal=EventJournal(tmp_path / "journal.jsonl"),
        hostname="node-1",
        write=kernel,
        follow_journal=False,
    )
    return host, tree, kernel


def test_is_a_host_backend(tmp_path):
    host, _, _ = make_host(tmp_path)
    backend: HostBackend = host
    assert backend.inventory().hostname == "node-1"


@pytest.mark.parametrize(("platform_key", "variant_key"), VARIANTS)
def test_inventory(tmp_path, platform_key, variant_key):
    platform = PLATFORMS[platform_key]
    variant = platform.variant(variant_key)
    host, _, _ = make_host(tmp_path, platform_key, variant_key)
    inv = host.inventory()
    assert (inv.platform, inv.variant) == (platform_key, variant_key)
    by_module = {g.module_id: g for g in inv.gpus}
    assert set(by_module) == set(platform.gpu_ids)
    for bdf, module, group, numa in zip(
        variant.gpu_bdfs, variant.module_ids, variant.gpu_iommu_groups, variant.gpu_numa, strict=True
    ):
        gpu = by_module[module]
        assert gpu.pci.address == normalize_address(bdf)
        assert gpu.pci.module_id == module
        assert (gpu.pci.iommu_group, gpu.pci.numa_node, gpu.pci.kind) == (group, numa, DeviceKind.GPU)
        assert gpu.alone_in_iommu_group
        assert gpu.vram_mib == platform.vram_mib
        assert gpu.firmware_version == ""  # never read by a service VM yet
    assert [s.address for s in inv.nvswitches] == sorted(normalize_address(b) for b in variant.switch_bdfs)
    if variant.switchtec_bdf:
        assert inv.switch_mgmt.address == normalize_address(variant.switchtec_bdf)
        assert inv.switch_mgmt.iommu_group == variant.switch_iommu_groups[0]
    else:
        assert inv.switch_mgmt is None
    assert inv.iommu_backend == "vfio-type1"
    assert inv.plug_mode == "cold"


def test_inventory_uses_the_last_service_vm_report(tmp_path):
    host, _, _ = make_host(tmp_path)
    host.records.put("0000:18:00.0", GpuReport(uuid="GPU-x", serial="1653", vram_mib=81_000, firmware_version="v1"))
    gpu = next(g for g in host.inventory().gpus if g.pci.address == "0000:18:00.0")
    assert (gpu.uuid, gpu.serial, gpu.vram_mib, gpu.firmware_version) == ("GPU-x", "1653", 81_000, "v1")


def test_inventory_logs_a_gpu_missing_from_the_bus(tmp_path, caplog):
    host, tree, _ = make_host(tmp_path)
    (tree.root / "bus/pci/devices/0000:18:00.0").unlink()
    with caplog.at_level(logging.ERROR):
        inv = host.inventory()
    assert len(inv.gpus) == 7
    assert "GPU module 2 (0000:18:00.0 in the board map) is not on the PCI bus" in caplog.text


def test_bind_and_unbind(tmp_path):
    host, tree, _ = make_host(tmp_path, gpu_driver="nvidia")
    host.bind_vfio("0000:3a:00.0")
    assert tree.driver_of("0000:3a:00.0") == "vfio-pci"
    host.unbind_vfio("0000:3a:00.0")
    assert tree.driver_of("0000:3a:00.0") is None


def test_partitions_through_fmpm(tmp_path):
    calls = []

    def runner(argv, timeout):
        calls.append(argv[1:])
        if argv[1] == "-l":
            return RunResult(0, (FIXTURES / "list_h100_singles_active.json").read_text())
        if argv[1:] == ["-a", "0"]:
            return RunResult(249, (FIXTURES / "activate_in_use.txt").read_text())
        return RunResult(0, "")

    host, _, _ = make_host(tmp_path, runner=runner)
    assert [p.partition_id for p in host.list_partitions() if p.active] == list(range(7, 15))
    with pytest.raises(PartitionInUse):
        host.activate_partition(0)
    host.deactivate_partition(7)
    host.set_activated_partitions(range(7, 15))
    assert calls[1:4] == [["-a", "0"], ["-d", "7"], ["--set-activated-list", "7,8,9,10,11,12,13,14"]]


def test_scrub_boots_a_vm_relays_progress_and_tears_it_down(tmp_path):
    guest = ScriptedGuest()
    host, _, _ = make_host(tmp_path, guest=guest)
    guest.is_running = host.service_vms.is_running
    steps = list(host.scrub_gpu(2))  # module 2 is 18:00.0 on the Supermicro board
    assert [s.phase for s in steps] == ["boot-vm", "reset", "clear", "verify", "done"]
    assert all(s.module_id == 2 for s in steps)
    assert steps[-1].done and steps[-1].ok
    assert guest.calls == [("scrub", "scrub-0000-18-00-0"), ("read", "scrub-0000-18-00-0")]
    assert guest.seen_running == [True, True]
    assert host.service_vms.connection().listAllDomains() == []
    assert host.records.get("0000:18:00.0").firmware_version == "96.00.74.00.01"


def test_failed_scrub_ends_not_ok_and_still_tears_down(tmp_path):
    host, _, _ = make_host(tmp_path, guest=ScriptedGuest(fail_at="clear"))
    steps = list(host.scrub_gpu(1))
    assert steps[-1].done and not steps[-1].ok and steps[-1].phase == "clear"
    assert host.service_vms.connection().listAllDomains() == []
    assert host.records.get("0000:3a:00.0") is None


def test_scrub_without_a_guest_runner_refuses(tmp_path):
    host, _, _ = make_host(tmp_path)
    with pytest.raises(FailedPrecondition, match="guest runner"):
        list(host.scrub_gpu(1))


def test_scrub_refuses_a_gpu_sharing_its_group(tmp_path):
    host, tree, _ = make_host(tmp_path, guest=ScriptedGuest())
    tree.add_device("0000:18:00.1", 0x15B3, 0x1021, 0x020700, group=38)
    with pytest.raises(FailedPrecondition, match="not alone"):
        list(host.scrub_gpu(2))
    with pytest.raises(NotFound):
        list(host.scrub_gpu(9))


def test_check_and_level_firmware(tmp_path):
    guest = ScriptedGuest(firmware="96.00.74.00.01")
    host, _, _ = make_host(tmp_path, guest=guest)
    status = host.check_firmware(3)
    assert (status.version, status.pinned, status.matches) == ("96.00.74.00.01", "96.00.99.00.01", False)
    status = host.level_firmware(3)
    assert status.matches and status.version == "96.00.99.00.01"
    assert [c[0] for c in guest.calls] == ["read", "read", "flash", "read"]
    assert host.inventory().gpus[3].firmware_version == "96.00.99.00.01"  # 5d:00.0 is module 3
    assert host.service_vms.connection().listAllDomains() == []


def test_level_firmware_that_does_not_stick_is_an_error(tmp_path):
    host, _, _ = make_host(tmp_path, guest=ScriptedGuest(flash_sticks=False))
    with pytest.raises(HardwareError, match="after flashing"):
        host.level_firmware(1)


def test_reset_writes_the_sysfs_reset_file(tmp_path):
    host, _, kernel = make_host(tmp_path)
    host.reset_gpu(5)  # ba:00.0
    assert kernel.writes == [("bus/pci/devices/0000:ba:00.0/reset", "1")]
    with pytest.raises(NotFound):
        host.reset_gpu(0)


def test_health_and_boot_events_from_the_journal(tmp_path):
    host, _, _ = make_host(tmp_path)
    journal = host.journal
    journal.append({"type": "health", "module_id": 3, "kind": "xid", "at": "2026-11-22T19:00:00+00:00", "xid": 79})
    journal.append({"type": "health", "module_id": "x", "kind": "xid", "at": "bad"})  # skipped
    journal.append({"type": "boot", "vm_id": "vm-1", "phase": "vfio-map", "started_at": "2026-11-22T19:00:00"})
    journal.append({"type": "boot", "vm_id": "vm-2", "phase": "kernel", "started_at": "2026-11-22T19:00:01"})
    journal.append(
        {
            "type": "boot",
            "vm_id": "vm-1",
            "phase": "ready",
            "started_at": "2026-11-22T19:00:05",
            "final": True,
        }
    )
    (tmp_path / "journal.jsonl").open("a").write("not json\n")
    (event,) = list(host.watch_health())
    assert (event.hostname, event.module_id, event.kind, event.xid) == ("node-1", 3, HealthKind.XID, 79)
    phases = list(host.watch_boot("vm-1"))
    assert [p.phase for p in phases] == ["vfio-map", "ready"]
    assert phases[-1].final


def test_following_the_journal_stops_when_asked(tmp_path):
    stop = threading.Event()
    journal = EventJournal(tmp_path / "j.jsonl", poll_s=0.01)
    events = journal.health("node-1", follow=True, stop=stop)
    journal.append({"type": "health", "module_id": 1, "kind": "gpu_lost", "at": "2026-11-22T19:00:00+00:00"})
    assert next(events).kind == HealthKind.GPU_LOST
    stop.set()
    assert list(events) == []


def test_followed_health_stream_reports_fabric_manager_restarts(tmp_path):
    """Journal events and fabric-manager restarts (probed with `fmpm -l`) on one stream."""
    fm_state = {"answer": RunResult(0, (FIXTURES / "list_h100_singles_active.json").read_text())}
    not_configured = RunResult(248, (FIXTURES / "list_not_configured.txt").read_text())
    host, _, _ = make_host(tmp_path, runner=lambda argv, timeout: fm_state["answer"])
    host.follow_journal, host.fabric_manager_poll_s, host.journal.poll_s = True, 0.02, 0.01
    safety = threading.Timer(10, host.stop.set)  # never hang the suite on a bug
    safety.start()
    try:
        stream = host.watch_health()
        fm_state["answer"] = not_configured  # restarted before the stream opened: reported too
        host.journal.append({"type": "health", "module_id": 3, "kind": "xid", "at": "2026-11-22T19:00:00+00:00",
                             "xid": 48})
        first, second = next(stream), next(stream)
        assert (first.kind, first.module_id, first.xid) == (HealthKind.XID, 3, 48)
        assert (second.kind, second.module_id, second.hostname) == (HealthKind.FABRIC_MANAGER_RESTARTED, 0, "node-1")
        fm_state["answer"] = RunResult(0, (FIXTURES / "list_h100_singles_active.json").read_text())  # told
        # A journal event a little later: the stream probes the running fabric manager meanwhile.
        later = threading.Timer(0.2, lambda: host.journal.append(
            {"type": "health", "module_id": 2, "kind": "temperature", "at": "2026-11-22T19:00:01+00:00",
             "temperature_c": 50.0}))
        later.start()
        assert next(stream).kind is HealthKind.TEMPERATURE  # running again: no restart event
        fm_state["answer"] = not_configured  # a second restart
        assert next(stream).kind is HealthKind.FABRIC_MANAGER_RESTARTED
        host.stop.set()
        assert list(stream) == []
    finally:
        safety.cancel()


def test_a_journal_record_can_announce_a_restart_and_probing_can_be_off(tmp_path):
    calls = []
    host, _, _ = make_host(tmp_path, runner=lambda argv, timeout: calls.append(argv) or RunResult(0, ""))
    host.journal.append({"type": "health", "module_id": 0, "kind": "fabric_manager_restarted",
                         "at": "2026-11-22T19:00:00+00:00"})
    (event,) = list(host.watch_health())  # not following: the journal's backlog, no probe
    assert (event.kind, event.module_id) == (HealthKind.FABRIC_MANAGER_RESTARTED, 0)
    assert calls == []


def test_records_survive_garbage(tmp_path):
    store = GpuRecordStore(tmp_path)
    (tmp_path / "0000:18:00.0.json").write_text(json.dumps([1]))
    assert store.get("0000:18:00.0") is None


def test_starts_the_fabric_manager_vm_once(tmp_path):
    host, _, _ = make_host(tmp_path)
    name = host.start_fabric_manager_vm(disk_image="/var/lib/gpu/fm.qcow2")
    assert host.start_fabric_manager_vm() == name  # already running: left alone
    assert host.service_vms.is_running(name)
    assert len(host.service_vms.connection().listAllDomains()) == 1
    host.close()
