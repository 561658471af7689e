"""`SimKubelet`: the scheduler, kubelets and Kata runtime of the simulated Kubernetes API server.

It reads the pods of an `ObjectStore` and plays, for each one:
- the scheduler: a pod is bound (`spec.nodeName`) to the node its `kubernetes.io/hostname` affinity
  names once that Node exists and is schedulable; until then it waits Pending, `Unschedulable`;
- the kubelet and Kata: a bound pod that asks for GPUs (the `gpuconsole.dev/gpu-indexes`
  annotation the console writes) runs as a VM on its simulated node, started through the node's
  SimAdmin VM calls (`simulator.cluster.SimNode`) with those GPUs. The pod follows the VM as
  `SimulatedCluster`'s do: Pending (`ContainerCreating`) while it boots, Running once it is up,
  Succeeded when its workload ends, Failed when it fails, is stopped, or cannot start. A pod
  without GPUs is a plain container and runs at once.
A node that does not answer leaves its pods as they were (kubelet retries). Deleting or evicting a
pod stops its VM. `sync` is called by the API server after writes and before reads of pods, and by
its background loop so that watches see VMs change on their own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hardware import kube_constants as kc
from hardware.cluster import PodPhase
from hardware.exceptions import HardwareError
from hardware.types import VmInfo, VmState
from simulator.cluster import NodeAccess, phase_of_vm
from simulator.kube_store import NODES, PODS, ObjectStore, now_rfc3339

log = logging.getLogger(__name__)


@dataclass
class _Vm:
    """The kubelet's own record of one pod's VM (by pod uid)."""

    node: str
    vm_id: str
    modules: tuple[int, ...]
    started: bool = False
    start_error: str = ""
    started_at: str = ""


def requested_gpus(pod: dict[str, Any]) -> tuple[int, ...]:
    """The GPU indexes the console pinned on the pod (its annotation), or () for a plain pod."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(kc.GPU_INDEXES_ANNOTATION, "")
    return tuple(int(i) for i in raw.split(",") if i.strip().isdigit())


def wanted_node(pod: dict[str, Any]) -> str:
    """`spec.nodeName` if bound, else the node its required hostname affinity names."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return spec["nodeName"]
    terms = ((((spec.get("affinity") or {}).get("nodeAffinity") or {})
              .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or [])
    for term in terms:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == kc.HOSTNAME_LABEL and expr.get("operator") == "In" and expr.get("values"):
                return expr["values"][0]
    return (spec.get("nodeSelector") or {}).get(kc.HOSTNAME_LABEL, "")


class SimKubelet:
    """Scheduler + kubelet + Kata over simulated nodes, for the pods of `store`."""

    def __init__(self, store: ObjectStore, nodes: NodeAccess, *,
                 module_of: Callable[[str, int], int] = lambda node, index: index,
                 guest_ram_gib: int = 64, workload_seconds: float = 0.0):
        self._store = store
        self._nodes = nodes
        self._module_of = module_of
        self._guest_ram_gib = guest_ram_gib
        self._workload_seconds = workload_seconds
        self._vms: dict[str, _Vm] = {}  # pod uid → its VM
        self._lock = threading.Lock()  # one sync at a time: a VM is started once

    def sync(self, pods: Iterable[tuple[str, str]] | None = None) -> None:
        """Bring the status of these (namespace, name) pods, or of all, up to date with their VMs."""
        with self._lock:
            if pods is None:
                current = self._store.items(PODS)
            else:
                current = [p for ns, name in set(pods) if (p := self._store.find(PODS, ns, name)) is not None]
            listings: dict[str, dict[str, VmInfo] | None] = {}
            for pod in current:
                meta = pod["metadata"]
                if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in (
                        PodPhase.SUCCEEDED, PodPhase.FAILED):
                    continue  # restartPolicy Never: an ended pod stays as it ended
                observed = self._observe(pod, listings)
                if observed is not None:
                    status, spec = observed
                    self._store.set_status(PODS, meta["namespace"], meta["name"], uid=meta["uid"], status=status,
                                           spec=spec)

    def stop(self, pod: dict[str, Any]) -> None:
        """The pod was deleted or evicted: stop its VM (a node that is away keeps it; nothing to do)."""
        with self._lock:
            vm = self._vms.pop(pod["metadata"].get("uid", ""), None)
            if vm is None or not vm.started:
                return
            with contextlib.suppress(HardwareError):
                self._nodes(vm.node).stop_vm(vm.vm_id)

    # -- one pod -----------------------------------------------------------------------------
    def _observe(self, pod: dict[str, Any], listings: dict[str, dict[str, VmInfo] | None]
                 ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """(new status, spec fields to bind) for one pod; None to leave it as it is."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        previous = dict(pod.get("status") or {})
        previous.setdefault("startTime", now_rfc3339())
        node = wanted_node(pod)
        bind = None
        if not spec.get("nodeName"):
            node_obj = self._store.find(NODES, "", node) if node else None
            if node_obj is None or (node_obj.get("spec") or {}).get("unschedulable"):
                why = f"node {node} is unschedulable" if node_obj else f"node {node or '(none)'} not found"
                return _status(pod, PodPhase.PENDING, scheduled=False, message=f"0/1 nodes are available: {why}",
                               previous=previous), None
            bind = {"nodeName": node}
        gpus = requested_gpus(pod)
        if not gpus:
            return _status(pod, PodPhase.RUNNING, state={"running": {"startedAt": previous["startTime"]}},
                           previous=previous), bind
        vm = self._vms.setdefault(meta["uid"], _Vm(
            node=node, vm_id=kc.vm_id_for_pod(meta["namespace"], meta["name"]),
            modules=tuple(self._module_of(node, i) for i in gpus)))
        info = None
        if not vm.started and not vm.start_error:
            try:
                info = self._nodes(node).start_vm(vm.vm_id, pod_name=meta["name"], gpu_module_ids=vm.modules,
                                                  guest_ram_gib=self._guest_ram_gib,
                                                  workload_seconds=self._workload_seconds)
                vm.started = True
                listings.pop(node, None)
            except HardwareError as exc:
                if exc.retryable:  # the node is away: the kubelet will try again
                    return _status(pod, PodPhase.PENDING, state={"waiting": {
                        "reason": "NodeUnreachable", "message": str(exc)}}, previous=previous), bind
                vm.start_error = str(exc)
        if vm.start_error:
            return _status(pod, PodPhase.FAILED, state={"terminated": {
                "exitCode": 128, "reason": "StartError", "message": vm.start_error}}, message=vm.start_error,
                previous=previous), bind
        if info is None:
            info = self._vm_info(vm, listings)
            if info is None:
                return None  # the node is away: its pods stay as they were
        phase, exit_code, reason = phase_of_vm(info)
        if phase == PodPhase.PENDING:
            state: dict[str, Any] = {"waiting": {"reason": reason}}
        elif phase == PodPhase.RUNNING:
            vm.started_at = vm.started_at or now_rfc3339()
            state = {"running": {"startedAt": vm.started_at}}
        else:
            state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                    "message": reason, "startedAt": vm.started_at or None}}
            state["terminated"] = {k: v for k, v in state["terminated"].items() if v is not None}
        return _status(pod, phase, state=state, message=reason if phase == PodPhase.FAILED else "",
                       previous=previous), bind

    def _vm_info(self, vm: _Vm, listings: dict[str, dict[str, VmInfo] | None]) -> VmInfo | None:
        """The VM as its node reports it now (one ListVms per node and sync); None if the node is away."""
        if vm.node not in listings:
            try:
                listings[vm.node] = {v.vm_id: v for v in self._nodes(vm.node).list_vms()}
            except HardwareError as exc:
                log.warning("node %s: cannot list VMs: %s", vm.node, exc)
                listings[vm.node] = None
        listing = listings[vm.node]
        if listing is None:
            return None
        info = listing.get(vm.vm_id)
        if info is None:  # the host lost it (rebooted): the container is gone
            return VmInfo(vm.vm_id, "", vm.modules, VmState.FAILED, (), "VM lost: the node no longer runs it")
        return info


def _status(pod: dict[str, Any], phase: str, *, state: dict[str, Any] | None = None, scheduled: bool = True,
            message: str = "", previous: dict[str, Any]) -> dict[str, Any]:
    """A pod status as a kubelet writes it (conditions, one container status for the workload)."""
    ready = phase == PodPhase.RUNNING
    conditions = [{"type": "PodScheduled", "status": "True" if scheduled else "False"}]
    if not scheduled:
        conditions[0].update(reason="Unschedulable", message=message)
    else:
        conditions += [{"type": "Initialized", "status": "True"},
                       {"type": "ContainersReady", "status": "True" if ready else "False"},
                       {"type": "Ready", "status": "True" if ready else "False"}]
    status: dict[str, Any] = {"phase": phase, "conditions": conditions, "qosClass": "BestEffort"}
    if scheduled:
        status["startTime"] = previous["startTime"]
        containers = (pod.get("spec") or {}).get("containers") or []
        status["containerStatuses"] = [{
            "name": c.get("name", ""), "image": c.get("image", ""), "imageID": "", "restartCount": 0,
            "ready": ready, "started": ready, "state": state or {"waiting": {"reason": "ContainerCreating"}},
        } for c in containers[:1]]
        if message and phase == PodPhase.FAILED:
            status["message"] = message
    return status
