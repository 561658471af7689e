"""The Xid catalog: what an NVIDIA Xid code means and what an operator does about it (HARDWARE.md).

Pure data. The agent attaches `action` to every Xid health event; the console decides from it
whether to drain, reset or quarantine a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class XidAction(StrEnum):
    NONE = "none"  # the tenant's application, not the GPU
    WATCH = "watch"  # keep watching; run diagnostics
    RESTART_APP = "restart_app"  # restart the application; reset the GPU later
    RESET_WHEN_CONVENIENT = "reset_when_convenient"  # e.g. a row remap that applies at reset
    RESET_GPU = "reset_gpu"
    DRAIN_AND_RESET = "drain_and_reset"
    DRAIN_AND_REBOOT = "drain_and_reboot_host"  # the GPU fell off the bus


@dataclass(frozen=True)
class XidEntry:
    xid: int
    meaning: str
    action: XidAction
    note: str = ""
    gpu_lost: bool = False  # the GPU disappears from the host until it reboots


_ENTRIES = (
    *(
        XidEntry(x, "application fault (bad address, page fault, channel reset, cleanup)", XidAction.NONE)
        for x in (13, 31, 43, 45, 68)
    ),
    XidEntry(
        48,
        "double-bit ECC error",
        XidAction.DRAIN_AND_RESET,
        "if 63/64 follow, reset; repeated → field diagnostics",
    ),
    XidEntry(62, "internal micro-controller halt", XidAction.RESET_GPU),
    XidEntry(63, "row remap recorded", XidAction.RESET_WHEN_CONVENIENT, "the remap applies at the next reset"),
    XidEntry(64, "row remap failed", XidAction.RESET_GPU, "repeats → RMA candidate"),
    XidEntry(74, "NVLink error", XidAction.DRAIN_AND_RESET, "check the board; may be caused by a failed peer"),
    XidEntry(
        79,
        "GPU fell off the bus",
        XidAction.DRAIN_AND_REBOOT,
        "reboot the host/baseboard; report",
        gpu_lost=True,
    ),
    XidEntry(92, "high single-bit ECC rate", XidAction.WATCH, "run diagnostics"),
    XidEntry(94, "contained ECC error", XidAction.RESTART_APP, "reset the GPU later"),
    XidEntry(95, "uncontained ECC error", XidAction.RESET_GPU),
    XidEntry(109, "context-switch timeout", XidAction.RESET_GPU),
    XidEntry(119, "GSP RPC timeout", XidAction.RESET_GPU),
    XidEntry(120, "GSP error", XidAction.RESET_GPU),
    XidEntry(140, "ECC escape (unrecovered ECC error)", XidAction.RESET_GPU),
)

XID_CATALOG: dict[int, XidEntry] = {e.xid: e for e in _ENTRIES}


def xid_entry(xid: int) -> XidEntry:
    """The catalog entry for `xid`; unknown codes get a conservative 'reset the GPU'."""
    return XID_CATALOG.get(xid) or XidEntry(xid, "unknown Xid", XidAction.RESET_GPU, "not in the catalog")
