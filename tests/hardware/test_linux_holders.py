"""LinuxHost's GPU holders on a fake proc tree: who holds a GPU's VFIO device, and eviction."""

from __future__ import annotations

import signal

import pytest

from hardware.agent.routing import SingleHost
from hardware.agent.server import serve
from hardware.agent_client import AgentClient
from hardware.exceptions import FailedPrecondition, NotFound
from hardware.linux.holders import guest_name, is_vm_process, vfio_device_paths
from hardware.linux.host import LinuxHost
from hardware.types import GpuHolder
from tests.hardware.fixtures.proc_tree import FakeKill, FakeProc
from tests.hardware.test_linux_host import make_host

GPU = 2  # module 2 is 0000:18:00.0 on the Supermicro board
OTHER_GPU = 4
QEMU = "/usr/bin/qemu-system-x86_64"
LIBVIRT_ARGV = [QEMU, "-name", "guest=vm-7,debug-threads=on", "-machine", "q35", "-device", "vfio-pci,host=18:00.0"]


def group_of(host, module_id: int) -> int:
    return host.sysfs.read_function(host.board_map.address_of(module_id)).iommu_group


def make(tmp_path, *, fatal=(signal.SIGTERM, signal.SIGKILL), exits=True, grace=0.05, wait=0.2):
    proc = FakeProc(tmp_path / "proc")
    kill = FakeKill(proc, fatal, exits=exits)
    host, tree, _ = make_host(tmp_path)
    host.vfio_holders.proc_root = proc.root
    host.vfio_holders.kill = kill
    host.vfio_holders.grace_s, host.vfio_holders.wait_s, host.vfio_holders.poll_s = grace, wait, 0.01
    return host, tree, proc, kill


@pytest.fixture
def node(tmp_path):
    return make(tmp_path)


def test_proc_root_kill_and_eviction_times_are_constructor_arguments(tmp_path):
    host, _, _ = make_host(tmp_path)
    assert str(host.vfio_holders.proc_root) == "/proc"

    def kill(pid, sig):
        return None

    other = LinuxHost(
        board_map=host.board_map,
        sysfs_root=host.sysfs.root,
        proc_root=tmp_path / "p",
        kill=kill,
        evict_grace_s=1.5,
        evict_wait_s=2.5,
        hostname="n",
        follow_journal=False,
    )
    holders = other.vfio_holders
    assert (holders.proc_root, holders.kill, holders.grace_s, holders.wait_s) == (tmp_path / "p", kill, 1.5, 2.5)


def test_the_qemu_holding_the_gpus_group_is_listed_with_its_guest_name(node):
    host, _, proc, _ = node
    group, other = group_of(host, GPU), group_of(host, OTHER_GPU)
    proc.add(1, "systemd", ["/sbin/init"], {0: "/dev/null"})
    proc.add(
        4242,
        "qemu-system-x86",
        LIBVIRT_ARGV,
        {0: "/dev/null", 17: "/dev/vfio/vfio", 18: f"/dev/vfio/{group}", 19: "anon_inode:[vfio-device]"},
    )
    proc.add(5000, "qemu-system-x86", [QEMU, "-name", "vm-other"], {18: f"/dev/vfio/{other}"})
    proc.add(7000, "python3", ["python3", "poke.py", "-name", "not-a-vm"], {3: f"/dev/vfio/{group}"})
    proc.add(7001, "bash", ["bash"], {3: f"/dev/vfio/{group}0"})  # another group, same prefix

    assert host.gpu_holders(GPU) == (
        GpuHolder(pid=4242, name="qemu-system-x86", vm_id="vm-7"),
        GpuHolder(pid=7000, name="python3", vm_id=""),
    )
    assert host.gpu_holders(OTHER_GPU) == (GpuHolder(pid=5000, name="qemu-system-x86", vm_id="vm-other"),)
    assert host.gpu_holders(6) == ()


def test_processes_that_vanish_or_cannot_be_read_mid_scan_are_skipped(node):
    host, _, proc, _ = node
    group = group_of(host, GPU)
    target = f"/dev/vfio/{group}"
    proc.add(4242, "qemu-system-x86", LIBVIRT_ARGV, {18: target})
    (proc.root / "6000").mkdir()  # exited between the proc listing and its fd folder: no fd/
    unreadable = proc.add(6001, "qemu-system-x86", [QEMU], {})
    (unreadable / "fd").rmdir()
    (unreadable / "fd").write_text("")  # fd/ cannot be listed (ENOTDIR; EACCES for a non-root agent)
    odd_fd = proc.add(6002, "qemu-system-x86", [QEMU], {})
    (odd_fd / "fd" / "3").write_text("")  # an fd entry that is not a link
    no_comm = proc.add(6003, "qemu-system-x86", [QEMU], {5: target})
    (no_comm / "comm").unlink()  # exited after its fds were read
    kernel_thread = proc.add(6004, "kworker/0:1", [], {5: target})  # empty cmdline

    assert host.gpu_holders(GPU) == (GpuHolder(4242, "qemu-system-x86", "vm-7"), GpuHolder(6004, "kworker/0:1", ""))
    assert kernel_thread.exists()


def test_the_iommufd_cdev_is_a_holder_too(node):
    host, tree, proc, _ = node
    address = host.board_map.address_of(GPU)
    (tree.root / "bus/pci/devices" / address / "vfio-dev" / "vfio3").mkdir(parents=True)
    kata = ["/opt/kata/bin/qemu-system-x86_64", "-name", "sandbox-3f2a,debug-threads=on", "-object", "iommufd,id=i0"]
    proc.add(900, "qemu-system-x86", kata, {10: "/dev/iommu", 11: "/dev/vfio/devices/vfio3"})
    proc.add(901, "qemu-system-x86", kata, {11: "/dev/vfio/devices/vfio30"})
    assert host.gpu_holders(GPU) == (GpuHolder(900, "qemu-system-x86", "sandbox-3f2a"),)


def test_unknown_gpu_is_not_found(node):
    host, *_ = node
    with pytest.raises(NotFound):
        host.gpu_holders(42)
    with pytest.raises(NotFound):
        host.evict_gpu_holders(42)


def test_evict_sends_sigterm_and_returns_who_left(node):
    host, _, proc, kill = node
    proc.add(4242, "qemu-system-x86", LIBVIRT_ARGV, {18: f"/dev/vfio/{group_of(host, GPU)}"})
    proc.add(5000, "qemu-system-x86", [QEMU], {18: f"/dev/vfio/{group_of(host, OTHER_GPU)}"})
    assert host.evict_gpu_holders(GPU) == (GpuHolder(4242, "qemu-system-x86", "vm-7"),)
    assert kill.calls == [(4242, signal.SIGTERM)]
    assert host.gpu_holders(GPU) == ()
    assert [h.pid for h in host.gpu_holders(OTHER_GPU)] == [5000]  # the other GPU's VM untouched


def test_evict_sigkills_what_ignores_sigterm(tmp_path):
    host, _, proc, kill = make(tmp_path, fatal=(signal.SIGKILL,))
    group = group_of(host, GPU)
    proc.add(4242, "qemu-system-x86", LIBVIRT_ARGV, {18: f"/dev/vfio/{group}"})
    proc.add(4300, "qemu-system-x86", [QEMU, "-name", "guest=vm-8"], {4: f"/dev/vfio/{group}"})
    evicted = host.evict_gpu_holders(GPU)
    assert [(h.pid, h.vm_id) for h in evicted] == [(4242, "vm-7"), (4300, "vm-8")]
    assert kill.calls == [
        (4242, signal.SIGTERM),
        (4300, signal.SIGTERM),
        (4242, signal.SIGKILL),
        (4300, signal.SIGKILL),
    ]
    assert host.gpu_holders(GPU) == ()


def test_nothing_holding_the_gpu_evicts_nobody(node):
    host, _, proc, kill = node
    proc.add(5000, "qemu-system-x86", [QEMU], {18: f"/dev/vfio/{group_of(host, OTHER_GPU)}"})
    assert host.evict_gpu_holders(GPU) == ()
    assert kill.calls == []


def test_a_holder_gone_before_its_signal_counts_as_evicted(node):
    host, _, proc, kill = node
    proc.add(4242, "qemu-system-x86", LIBVIRT_ARGV, {18: f"/dev/vfio/{group_of(host, GPU)}"})

    def gone_first(pid, sig):
        proc.reap(pid)
        kill(pid, sig)  # ProcessLookupError: already gone

    host.vfio_holders.kill = gone_first
    assert [h.pid for h in host.evict_gpu_holders(GPU)] == [4242]


def test_still_held_after_the_wait_is_a_failed_precondition(tmp_path):
    host, _, proc, kill = make(tmp_path, fatal=())  # stuck in the kernel: signals do nothing
    proc.add(4242, "qemu-system-x86", LIBVIRT_ARGV, {18: f"/dev/vfio/{group_of(host, GPU)}"})
    with pytest.raises(FailedPrecondition, match=r"GPU 2 \(0000:18:00.0\) is still held after SIGTERM, SIGKILL") as err:
        host.evict_gpu_holders(GPU)
    assert "pid 4242 (qemu-system-x86, VM vm-7)" in str(err.value)
    assert kill.calls == [(4242, signal.SIGTERM), (4242, signal.SIGKILL)]
    assert not str(err.value).startswith("in use")  # not read as PartitionInUse by the client


def test_eviction_waits_for_a_holder_to_finish_exiting_and_never_rekills_it(tmp_path):
    host, _, proc, kill = make(tmp_path, exits=False)  # fds closed, the process still exiting
    proc.add(4242, "qemu-system-x86", LIBVIRT_ARGV, {18: f"/dev/vfio/{group_of(host, GPU)}"}, state="D")
    with pytest.raises(FailedPrecondition, match=r"pid 4242 .* still exiting"):
        host.evict_gpu_holders(GPU)
    assert kill.calls == [(4242, signal.SIGTERM)]  # its pid may be reused once reaped: no SIGKILL

    proc.add(4243, "qemu-system-x86", LIBVIRT_ARGV, {18: f"/dev/vfio/{group_of(host, GPU)}"}, state="Z")
    assert [h.pid for h in host.evict_gpu_holders(GPU)] == [4243]  # a zombie has released its files


def test_eviction_failure_reaches_the_client_as_failed_precondition(tmp_path):
    host, _, proc, _ = make(tmp_path, fatal=())
    proc.add(4242, "qemu-system-x86", LIBVIRT_ARGV, {18: f"/dev/vfio/{group_of(host, GPU)}"})
    server = serve(SingleHost(host, host.hostname), insecure=True)
    try:
        with AgentClient(server.address, insecure=True, timeout=5, retries=0) as client:
            assert client.gpu_holders(GPU) == (GpuHolder(4242, "qemu-system-x86", "vm-7"),)
            with pytest.raises(FailedPrecondition, match="still held") as err:
                client.evict_gpu_holders(GPU)
            assert type(err.value) is FailedPrecondition
            with pytest.raises(NotFound):
                client.gpu_holders(42)
    finally:
        server.stop(grace=0)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["qemu", "-name", "guest=vm-1,debug-threads=on"], "vm-1"),
        (["qemu", "-name", "vm-2"], "vm-2"),
        (["qemu", "-name", "vm-3,process=qemu:vm-3"], "vm-3"),
        (["qemu", "-name", "debug-threads=on,guest=vm-4"], "vm-4"),
        (["qemu", "-name", "guest=a,,b"], "a,b"),  # ",," is a literal comma
        (["qemu", "--name", "vm-5"], "vm-5"),
        (["qemu", "-name=guest=vm-6"], "vm-6"),
        (["qemu", "-name", "old", "-name", "new"], "new"),  # QEMU keeps the last
        (["qemu", "-name", "debug-threads=on"], ""),
        (["qemu", "-machine", "q35"], ""),
        (["qemu", "-name"], ""),
    ],
)
def test_guest_name(argv, expected):
    assert guest_name(argv) == expected


def test_vm_processes_are_qemu_or_kata():
    assert is_vm_process("qemu-system-x86", [])
    assert is_vm_process("CPU 0/KVM", ["/opt/kata/bin/qemu-system-x86_64"])
    assert is_vm_process("kata-qemu", ["x"])
    assert not is_vm_process("python3", ["python3", "-name", "x"])


def test_vfio_device_paths(tmp_path):
    assert vfio_device_paths(None, tmp_path) == frozenset()
    (tmp_path / "vfio-dev" / "vfio7").mkdir(parents=True)
    assert vfio_device_paths(12, tmp_path) == {"/dev/vfio/12", "/dev/vfio/devices/vfio7"}
