"""A fake simulated node for cluster tests: SimAdmin's VM calls, with VM states the test sets."""

from __future__ import annotations

from hardware.exceptions import AgentUnavailable, FailedPrecondition
from hardware.types import VmInfo, VmState


class FakeNode:
    """A simulated node's SimAdmin VM calls (start_vm / stop_vm / get_vm / list_vms); tests set VM states."""

    def __init__(self, name: str):
        self.name = name
        self.vms: dict[str, VmInfo] = {}
        self.calls: list[tuple] = []
        self.unreachable = False
        self.refuse: str = ""

    def start_vm(self, vm_id, *, pod_name, gpu_module_ids, guest_ram_gib, workload_seconds=0.0):
        if self.unreachable:
            raise AgentUnavailable("node away")
        if self.refuse:
            raise FailedPrecondition(self.refuse)
        self.calls.append(("start", vm_id, pod_name, tuple(gpu_module_ids), guest_ram_gib, workload_seconds))
        self.vms[vm_id] = VmInfo(vm_id, pod_name, tuple(gpu_module_ids), VmState.BOOTING)
        return self.vms[vm_id]

    def stop_vm(self, vm_id):
        self.calls.append(("stop", vm_id))
        self.set(vm_id, VmState.STOPPED, "stopped")
        return self.vms[vm_id]

    def get_vm(self, vm_id):
        return self.vms[vm_id]

    def list_vms(self):
        if self.unreachable:
            raise AgentUnavailable("node away")
        return list(self.vms.values())

    def set(self, vm_id, state, detail=""):
        vm = self.vms[vm_id]
        self.vms[vm_id] = VmInfo(vm.vm_id, vm.pod_name, vm.gpu_module_ids, state, (), detail)
