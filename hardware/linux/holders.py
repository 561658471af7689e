"""Which processes hold a GPU's VFIO device open, read from a proc tree, and their eviction.

A VM holds a GPU through an open file: `/dev/vfio/<IOMMU group>` (the VFIO group API) or, with
iommufd, the device's cdev `/dev/vfio/devices/vfio<N>` (named in sysfs by
`<device>/vfio-dev/vfio<N>`). The kernel shows each open file of a process as a symlink
`<proc>/<pid>/fd/<n>` to the path that was opened, so one walk of the proc tree finds the holders;
`comm` names them, and a QEMU's (or Kata's QEMU's) command line names its guest (`-name`).

Processes come and go during the walk: one whose fd folder or `comm` cannot be read (it exited,
or it is not ours to read) is skipped, as is an fd that cannot be read.

Eviction: SIGTERM the holders, SIGKILL what still holds the device after a grace, then wait
(bounded) until nothing holds it and the signalled processes have finished exiting (an exiting
process drops its fds before the kernel has released the device; the process is gone or a zombie
once it has). The kill function is injectable so tests play the kernel on a fake proc tree.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from hardware.exceptions import FailedPrecondition
from hardware.types import GpuHolder

log = logging.getLogger(__name__)

DEFAULT_PROC_ROOT = Path("/proc")
VFIO_DEV = "/dev/vfio"
EVICT_GRACE_S = 10.0  # SIGTERM → SIGKILL: QEMU shuts down cleanly in well under this
EVICT_WAIT_S = 30.0  # after SIGKILL: unpinning a large guest's memory can take a while
EVICT_POLL_S = 0.1
EXITED_STATES = frozenset("ZX")  # /proc/<pid>/stat: zombie or dead, its files released

# (pid, signal) → None, like os.kill.
Kill = Callable[[int, int], None]


def vfio_device_paths(iommu_group: int | None, device_dir: Path) -> frozenset[str]:
    """The device files through which a process can hold this PCI function: its IOMMU group's
    `/dev/vfio/<group>` and, where the kernel made one, its iommufd cdev."""
    paths = {f"{VFIO_DEV}/{iommu_group}"} if iommu_group is not None else set()
    try:
        cdevs = os.listdir(device_dir / "vfio-dev")
    except OSError:
        cdevs = []
    paths.update(f"{VFIO_DEV}/devices/{name}" for name in cdevs if name.startswith("vfio"))
    return frozenset(paths)


def is_vm_process(name: str, argv: list[str]) -> bool:
    """A QEMU, Kata's included (its comm is truncated to 15 characters: "qemu-system-x86")."""
    names = [name, os.path.basename(argv[0])] if argv else [name]
    return any(n.startswith("qemu") or "kata" in n for n in names)


def guest_name(argv: list[str]) -> str:
    """The guest name of a QEMU command line (`-name guest=<name>,...` or `-name <name>`), or ""."""
    found = ""
    for i, arg in enumerate(argv):
        if arg in ("-name", "--name") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(("-name=", "--name=")):
            value = arg.partition("=")[2]
        else:
            continue
        found = _guest_option(value)  # QEMU keeps the last -name
    return found


def _guest_option(value: str) -> str:
    for index, part in enumerate(_split_options(value)):
        key, sep, rest = part.partition("=")
        if not sep and index == 0:
            return part  # the implied key: `-name vm-1,debug-threads=on`
        if key == "guest":
            return rest
    return ""


def _split_options(value: str) -> list[str]:
    """QEMU's option syntax: parts separated by ",", a literal comma written ",,"."""
    parts, current, i = [], [], 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1 : i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(value[i])
        i += 1
    parts.append("".join(current))
    return parts


class VfioHolders:
    """Finds, and evicts, the processes holding VFIO device files open, over a proc tree."""

    def __init__(
        self,
        proc_root: str | os.PathLike[str] = DEFAULT_PROC_ROOT,
        *,
        kill: Kill = os.kill,
        grace_s: float = EVICT_GRACE_S,
        wait_s: float = EVICT_WAIT_S,
        poll_s: float = EVICT_POLL_S,
    ) -> None:
        self.proc_root = Path(proc_root)
        self.kill = kill
        self.grace_s, self.wait_s, self.poll_s = grace_s, wait_s, poll_s

    # -- reading ---------------------------------------------------------------------------------

    def holders(self, paths: Collection[str]) -> tuple[GpuHolder, ...]:
        """The processes with one of `paths` open, by pid."""
        if not paths:
            return ()
        found = []
        for pid in self._pids():
            holder = self._holder(pid, paths)
            if holder is not None:
                found.append(holder)
        return tuple(found)

    def _pids(self) -> list[int]:
        try:
            names = os.listdir(self.proc_root)
        except OSError as exc:
            raise FailedPrecondition(f"cannot list processes in {self.proc_root}: {exc}") from None
        return sorted(int(name) for name in names if name.isdigit())

    def _holder(self, pid: int, paths: Collection[str]) -> GpuHolder | None:
        pid_dir = self.proc_root / str(pid)
        fd_dir = pid_dir / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # exited during the walk, or not ours to read
            return None
        if not any(_link(fd_dir / fd) in paths for fd in fds):
            return None
        try:
            name = (pid_dir / "comm").read_text(errors="replace").rstrip("\n")
        except OSError:
            return None  # exited since its fds were read
        argv = _cmdline(pid_dir / "cmdline")
        return GpuHolder(pid=pid, name=name, vm_id=guest_name(argv) if is_vm_process(name, argv) else "")

    def _exited(self, pid: int) -> bool:
        try:
            stat = (self.proc_root / str(pid) / "stat").read_text(errors="replace")
        except OSError:
            return True  # gone (reaped)
        # "<pid> (<comm>) <state> ...": comm may hold spaces and parentheses, so split at the last ")".
        fields = stat.rpartition(")")[2].split()
        return bool(fields) and fields[0] in EXITED_STATES

    # -- eviction --------------------------------------------------------------------------------

    def evict(self, paths: Collection[str], *, what: str) -> tuple[GpuHolder, ...]:
        """SIGTERM the holders of `paths`, SIGKILL those still holding after the grace, wait until
        none is left; returns every process signalled (empty when none held them).
        FailedPrecondition when `what` is still held, or a signalled process still exiting, after the wait."""
        first = self.holders(paths)
        if not first:
            return ()
        evicted = {h.pid: h for h in first}
        log.warning("evicting %s from %s: SIGTERM", _describe(first), what)
        self._signal(first, signal.SIGTERM)
        holding, exiting = self._wait(paths, evicted, self.grace_s)
        if holding:
            # Only what holds the device now: a process merely still exiting is not killed again.
            evicted.update((h.pid, h) for h in holding if h.pid not in evicted)
            log.warning("%s still held by %s after %g s: SIGKILL", what, _describe(holding), self.grace_s)
            self._signal(holding, signal.SIGKILL)
        if holding or exiting:
            holding, exiting = self._wait(paths, evicted, self.wait_s)
        waited = f"{self.grace_s + self.wait_s:g} s"
        if holding:
            raise FailedPrecondition(f"{what} is still held after SIGTERM, SIGKILL and {waited}: {_describe(holding)}")
        if exiting:
            raise FailedPrecondition(f"{what}: {_describe(exiting)} still exiting after {waited}")
        return tuple(evicted[pid] for pid in sorted(evicted))

    def _signal(self, holders: Iterable[GpuHolder], sig: int) -> None:
        for holder in holders:
            try:
                self.kill(holder.pid, sig)
            except ProcessLookupError:
                pass  # already gone
            except OSError as exc:  # it stays a holder: the wait reports it
                log.error("cannot send %s to pid %d (%s): %s", signal.Signals(sig).name, holder.pid, holder.name, exc)

    def _wait(
        self, paths: Collection[str], signalled: dict[int, GpuHolder], seconds: float
    ) -> tuple[tuple[GpuHolder, ...], tuple[GpuHolder, ...]]:
        """Poll until nothing holds `paths` and every signalled process has exited, or `seconds`
        pass; returns (the holders left, the signalled processes still exiting)."""
        deadline = time.monotonic() + seconds
        while True:
            holding = self.holders(paths)
            exiting = () if holding else tuple(h for pid, h in sorted(signalled.items()) if not self._exited(pid))
            remaining = deadline - time.monotonic()
            if not (holding or exiting) or remaining <= 0:
                return holding, exiting
            time.sleep(min(self.poll_s, remaining))


def _link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # closed since the listing, or not a link
        return None


def _cmdline(path: Path) -> list[str]:
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _describe(holders: Iterable[GpuHolder]) -> str:
    return ", ".join(f"pid {h.pid} ({h.name}{f', VM {h.vm_id}' if h.vm_id else ''})" for h in holders)
