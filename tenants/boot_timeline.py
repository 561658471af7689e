"""A lease's VM boot as the lease page draws it: the eight phases in fixed order on one time axis,
each measured bar beside the model's prediction (a ghost bar), the slowest phase with its remedy,
and the server features that drove the prediction.

Positions are boot seconds, not wall-clock times: a phase's length is the host's own measure
(`BootPhase.duration_s`), and phases follow one another, so the measured bars and the predicted
ones line up phase for phase whatever the host's clock (or the simulator's acceleration). The phase
still running grows on the page by the browser's clock (console/static/console/timeline.js) from
`running_elapsed_s` at render, at `rate` boot seconds per wall second; the server only sends
boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from fleet.boot import server_boot_estimate, server_boot_features
from hardware.boot_model import (
    BAR_MAPPING,
    BATCHED_BAR_SIZING_GUEST,
    CONTAINER_START,
    DRIVER_INIT,
    GUEST_PCI_ENUMERATION,
    HUGE_PFNMAP_KERNEL,
    HUGE_PFNMAP_QEMU,
    INIT_CDI,
    KATA_AGENT,
    OLDEST_GUEST_KERNEL,
    OLDEST_HOST_KERNEL,
    PFNMAP_DMA_BATCH_KERNEL,
    PHASES,
    PLUG,
    RAM_PINNING,
    TYPE1_4K_STEP_KERNEL,
    parse_kernel_version,
)
from tenants.constants import GUEST_RAM_GIB
from tenants.models import BootPhase, Lease
from tenants.states import LeaseState

L = LeaseState

PHASE_LABELS = {
    RAM_PINNING: "RAM pinning",
    BAR_MAPPING: "BAR mapping",
    PLUG: "Plug",
    GUEST_PCI_ENUMERATION: "Guest PCI enumeration",
    DRIVER_INIT: "Driver init",
    INIT_CDI: "Init system / CDI",
    KATA_AGENT: "kata-agent",
    CONTAINER_START: "Container start",
}
# Tick steps (seconds) the axis picks from: at most MAX_TICKS intervals.
TICK_STEPS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200)
MAX_TICKS = 8
# Observed boot seconds per wall second are trusted between these (the simulator runs its clock
# faster; a lagging watcher must not make a real host's bar crawl).
RATE_MIN, RATE_MAX = 1.0, 10_000.0

DONE, RUNNING, WAITING, NOT_RUN = "done", "running", "waiting", "not run"


@dataclass
class PhaseBar:
    phase: str
    label: str
    status: str
    seconds: float | None  # measured (done), elapsed at render (running), else None
    predicted: float | None
    offset: float = 0.0  # boot seconds from the boot's start to the measured bar
    predicted_offset: float = 0.0
    started_at: datetime | None = None  # console times
    ended_at: datetime | None = None
    detail: str = ""
    slowest: bool = False
    # Percent of the axis, filled in once the axis is known.
    left: float = 0.0
    width: float = 0.0
    ghost_left: float = 0.0
    ghost_width: float = 0.0

    @property
    def known(self) -> bool:
        return self.phase in PHASE_LABELS

    @property
    def delta_pct(self) -> int | None:
        """Measured against predicted, in per cent (done phases with a non-zero prediction)."""
        if self.status != DONE or not self.predicted or self.seconds is None:
            return None
        return round((self.seconds - self.predicted) / self.predicted * 100)


@dataclass
class Feature:
    label: str
    value: str
    drives: str  # the phases it moves


@dataclass
class Timeline:
    lease_state: str
    phases: list[PhaseBar]
    scale_s: float = 0.0
    ticks: list[tuple[float, str]] = field(default_factory=list)
    measured_s: float = 0.0  # done phases
    predicted_s: float = 0.0
    predicted_end_pct: float = 0.0
    running: PhaseBar | None = None
    running_elapsed_s: float = 0.0  # wall seconds since the running phase began, at render
    rate: float = 1.0
    slowest: PhaseBar | None = None
    slowest_measured: bool = False
    slowest_share_pct: int = 0
    remedy: str = ""
    features: list[Feature] = field(default_factory=list)

    @property
    def has_boot(self) -> bool:
        return any(p.status != WAITING for p in self.phases)

    @property
    def done_count(self) -> int:
        return sum(p.status == DONE for p in self.phases)

    @property
    def booting(self) -> bool:
        return self.running is not None

    @property
    def total_delta_pct(self) -> int | None:
        if not self.predicted_s or self.running or not self.done_count:
            return None
        return round((self.measured_s - self.predicted_s) / self.predicted_s * 100)


def build_timeline(lease: Lease, rows: list[BootPhase], *, now: datetime) -> Timeline:
    """The timeline of `lease` from its BootPhase rows (in seq order). A lease without rows but with
    a server (placed, or refused as too slow to boot) shows the model's prediction alone."""
    by_phase = {r.phase: r for r in rows}
    if not rows and lease.allocation_id:
        estimate = server_boot_estimate(lease.server, gpus=lease.gpu_count, guest_ram_gib=GUEST_RAM_GIB)
        predicted = dict(estimate.phases)
    else:
        predicted = {r.phase: r.predicted_seconds for r in rows}
    order = list(PHASES) + [r.phase for r in rows if r.phase not in PHASE_LABELS]
    bars: list[PhaseBar] = []
    booting = lease.state == L.BOOTING
    offset = predicted_offset = 0.0
    previous_end = lease.booting_at
    running: PhaseBar | None = None
    wall_since = None
    for phase in order:
        row = by_phase.get(phase)
        bar = PhaseBar(phase=phase, label=PHASE_LABELS.get(phase, phase.replace("_", " ")), status=WAITING,
                       seconds=None, predicted=predicted.get(phase), offset=offset,
                       predicted_offset=predicted_offset)
        if row is not None:
            bar.started_at, bar.ended_at, bar.detail = row.started_at, row.ended_at, row.detail
        if row is not None and row.duration_s is not None:
            bar.status, bar.seconds = DONE, row.duration_s
            offset += row.duration_s
            previous_end = row.ended_at or previous_end
        elif booting and running is None:
            bar.status = RUNNING
            running = bar
            wall_since = (row.started_at if row is not None and row.started_at else None) or previous_end
        elif rows and lease.booting_at and not booting:
            bar.status = NOT_RUN  # the boot is over (or ended early) and this phase was never reported done
        predicted_offset += bar.predicted or 0.0
        bars.append(bar)

    t = Timeline(lease_state=lease.state, phases=bars, running=running)
    t.measured_s = sum(b.seconds for b in bars if b.status == DONE)
    t.predicted_s = sum(b.predicted or 0.0 for b in bars)
    t.rate = _rate(bars, lease.booting_at)
    if running is not None:
        t.running_elapsed_s = max((now - wall_since).total_seconds(), 0.0) if wall_since else 0.0
        running.seconds = t.running_elapsed_s * t.rate
    _axis(t)
    _slowest(t)
    if lease.allocation_id:
        t.features = boot_features(lease)
        if t.slowest is not None:
            t.remedy = remedy(t.slowest.phase, server_boot_features(lease.server))
    return t


def _rate(bars: list[PhaseBar], booting_at: datetime | None) -> float:
    """Boot seconds per wall second observed so far: 1 on a real host, the clock's acceleration in
    the simulator (its measures are simulated seconds, its events arrive in real time)."""
    done = [b for b in bars if b.status == DONE and b.ended_at]
    if not done or booting_at is None:
        return 1.0
    wall = (max(b.ended_at for b in done) - booting_at).total_seconds()
    boot = sum(b.seconds for b in done)
    if wall <= 0.2 or boot <= 0:
        return 1.0
    return min(max(boot / wall, RATE_MIN), RATE_MAX)


def _axis(t: Timeline) -> None:
    """One axis for measured and predicted bars: a whole number of tick steps past the longer."""
    reach = max([t.predicted_s, t.measured_s + (t.running.seconds if t.running else 0.0), 1.0])
    step = next((s for s in TICK_STEPS if reach / s <= MAX_TICKS), TICK_STEPS[-1])
    t.scale_s = math.ceil(reach * 1.02 / step) * step
    t.ticks = [(i * step / t.scale_s * 100, tick_label(i * step)) for i in range(int(t.scale_s / step) + 1)]
    t.predicted_end_pct = _pct(t.predicted_s, t.scale_s)
    for b in t.phases:
        b.ghost_left, b.ghost_width = _pct(b.predicted_offset, t.scale_s), _pct(b.predicted or 0.0, t.scale_s)
        if b.status in (DONE, RUNNING):
            b.left = _pct(b.offset, t.scale_s)
            b.width = min(_pct(b.seconds or 0.0, t.scale_s), 100.0 - b.left)


def _pct(seconds: float, scale: float) -> float:
    return round(seconds / scale * 100, 3) if scale else 0.0


def _slowest(t: Timeline) -> None:
    """The slowest measured phase; before any phase is measured, the slowest predicted one."""
    done = [b for b in t.phases if b.status == DONE and b.seconds]
    if done:
        t.slowest, t.slowest_measured = max(done, key=lambda b: b.seconds), True
        total = t.measured_s
        value = t.slowest.seconds
    else:
        ahead = [b for b in t.phases if b.predicted]
        if not ahead:
            return
        t.slowest = max(ahead, key=lambda b: b.predicted)
        total, value = t.predicted_s, t.slowest.predicted
    t.slowest.slowest = True
    t.slowest_share_pct = round(value / total * 100) if total else 0


def tick_label(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min" if not rest else f"{minutes}:{rest:02d}"


def duration(seconds: float | None) -> str:
    """12.3 s, 2 min 5 s, 1 h 2 min."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def boot_features(lease: Lease) -> list[Feature]:
    """The features the prediction read, as people name them, with the phases each one moves."""
    f = server_boot_features(lease.server)
    return [
        Feature("Host kernel", f["host_kernel"] or "unknown (taken as 5.15)", "BAR mapping, plug, PCI enumeration"),
        Feature("QEMU", f["qemu_version"] or "unknown (taken as < 9.2)", "BAR mapping"),
        Feature("IOMMU backend", f["iommu_backend"] or "vfio-type1", "RAM pinning"),
        Feature("Guest RAM", f"{GUEST_RAM_GIB} GiB, {'1 GiB huge pages' if f['hugepages'] else '4 KiB pages'}",
                "RAM pinning"),
        Feature("GPUs", str(lease.gpu_count), "BAR mapping, plug, PCI enumeration, driver init, CDI"),
        Feature("Plug mode", f"{f['plug_mode'] or 'hot'}-plug", "plug"),
        Feature("Guest kernel", f["guest_kernel"], "PCI enumeration (BAR sizing)"),
        Feature("Guest firmware", (f["firmware"] or "ovmf").upper() if f["firmware"] != "seabios" else "SeaBIOS",
                "PCI enumeration"),
        Feature("Init system", "NVRC" if f["init_system"] == "nvrc" else "systemd", "init system / CDI"),
    ]


def remedy(phase: str, f: dict) -> str:
    """What shortens `phase` on a server with features `f` (fleet.boot.server_boot_features): the
    mechanism that makes it slow, then the remedy (HARDWARE.md "VM boot, mechanism by mechanism")."""
    host = parse_kernel_version(f.get("host_kernel", "")) or OLDEST_HOST_KERNEL
    qemu = parse_kernel_version(f.get("qemu_version", "")) or (0, 0)
    guest = parse_kernel_version(f.get("guest_kernel", "")) or OLDEST_GUEST_KERNEL
    if phase == RAM_PINNING:
        if not f.get("hugepages"):
            return "Guest RAM pinned in 4 KiB pages (zeroing ≈ 0.25 s per GB): back guest RAM with 1 GiB huge pages"
        return "Guest RAM already on 1 GiB huge pages: only a smaller guest RAM pins faster"
    if phase == BAR_MAPPING:
        if host < TYPE1_4K_STEP_KERNEL:
            return ("BAR faulted page by page (5.15-era legacy VFIO, 33 M pages per 128 GiB BAR): a host kernel "
                    "with huge-pfnmap VFIO (≥ 6.12, with QEMU ≥ 9.2)")
        if host >= HUGE_PFNMAP_KERNEL and qemu < HUGE_PFNMAP_QEMU:
            return (f"BAR mapped in 4 KiB steps because QEMU {f.get('qemu_version') or '(unknown)'} predates 9.2: "
                    "QEMU ≥ 9.2 for huge-pfnmap VFIO")
        if host >= PFNMAP_DMA_BATCH_KERNEL:
            return "BAR mapping already batched (host ≥ 6.15): nothing left to gain here"
        if host >= HUGE_PFNMAP_KERNEL:
            return "BAR mapped with huge-pfnmap (1 GiB steps): a host kernel ≥ 6.15 maps a BAR in under 1 ms (est.)"
        return "BAR mapped in 4 KiB steps: a host kernel with huge-pfnmap VFIO (≥ 6.12, with QEMU ≥ 9.2)"
    if phase == PLUG:
        if f.get("plug_mode", "hot") != "hot":
            return "GPUs cold-plugged before boot: nothing left to gain here"
        if host < TYPE1_4K_STEP_KERNEL:
            return ("GPUs hot-plugged one by one, each plug faulting the BARs already mapped again: cold-plug "
                    "(and a host kernel ≥ 6.8)")
        return "GPUs hot-plugged one by one: cold-plug"
    if phase == GUEST_PCI_ENUMERATION:
        if guest < BATCHED_BAR_SIZING_GUEST:
            return (f"Guest kernel {f.get('guest_kernel') or '(unknown)'} sizes BARs toggle by toggle, each making "
                    "the host unmap and remap the BAR: a guest kernel ≥ 6.14 (batched BAR sizing)")
        if f.get("firmware", "ovmf") == "ovmf":
            return "OVMF enumerates PCI and places the BARs before the kernel starts: SeaBIOS starts faster (est.)"
        return "About 0.8 s per GPU in an NVIDIA PCI quirk: nothing to tune"
    if phase == DRIVER_INIT:
        return ("The guest NVIDIA driver brings GPUs up one after another (≈ 5.5 s each): no host-side remedy; "
                "fewer GPUs per VM")
    if phase == INIT_CDI:
        if f.get("init_system", "systemd") == "systemd":
            return ("systemd starts before nvidia-ctk writes the CDI spec the kata-agent waits for: NVRC as the "
                    "guest's init")
        return "NVRC already: what is left is nvidia-ctk writing the CDI spec"
    if phase in (KATA_AGENT, CONTAINER_START):
        return "Seconds: nothing to gain here"
    return "A phase the boot model does not know: see the host's boot log"
