"""SimAdmin servicer: fault injection, VMs (kubelet + Kata stand-in), firmware, fabric manager, clock.

Served next to NodeAgent by simulated agents and routed the same way (`x-gpuconsole-node`).
"""

from __future__ import annotations

import grpc

from hardware.agent import convert
from hardware.agent.routing import HostResolver, node_of
from hardware.agent.servicer import EMPTY, call
from hardware.proto.gen.gpuconsole.simulator.v1 import simadmin_pb2 as simpb
from hardware.proto.gen.gpuconsole.simulator.v1 import simadmin_pb2_grpc
from hardware.types import ClockInfo
from simulator.clock import SimClock
from simulator.host import SimHost


class SimAdminServicer(simadmin_pb2_grpc.SimAdminServicer):
    def __init__(self, resolver: HostResolver, clock: SimClock) -> None:
        self.resolver = resolver
        self.clock = clock

    def _host(self, context) -> SimHost:
        return call(context, lambda: self.resolver.host(node_of(context)))

    def InjectFault(self, request, context):
        host = self._host(context)
        kind = request.kind
        m = request.module_id
        if kind == simpb.FAULT_KIND_XID:
            call(context, lambda: host.inject_xid(m, request.xid))
        elif kind == simpb.FAULT_KIND_THERMAL:
            call(context, lambda: host.inject_thermal(m, request.temperature_c))
        elif kind == simpb.FAULT_KIND_NVLINK:
            call(context, lambda: host.inject_nvlink(m, request.count or 1))
        elif kind == simpb.FAULT_KIND_SCRUB_FAILURE:
            call(context, lambda: host.fail_next_scrub(m))
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown fault kind {kind}")
        return EMPTY

    def StartVm(self, request, context):
        host = self._host(context)
        info = call(
            context,
            lambda: host.start_vm(
                request.vm_id,
                request.pod_name,
                list(request.gpu_module_ids),
                request.guest_ram_gib,
                request.workload_seconds,
            ),
        )
        return convert.vm_to_pb(info)

    def StopVm(self, request, context):
        host = self._host(context)
        return convert.vm_to_pb(call(context, lambda: host.stop_vm(request.vm_id)))

    def GetVm(self, request, context):
        host = self._host(context)
        return convert.vm_to_pb(call(context, lambda: host.get_vm(request.vm_id)))

    def ListVms(self, request, context):
        host = self._host(context)
        return simpb.ListVmsResponse(vms=[convert.vm_to_pb(v) for v in call(context, host.list_vms)])

    def FlashFirmware(self, request, context):
        host = self._host(context)
        call(context, lambda: host.flash_firmware(request.module_id, request.version))
        return EMPTY

    def RestartFabricManager(self, request, context):
        call(context, self._host(context).restart_fabric_manager)
        return EMPTY

    def RebootHost(self, request, context):
        call(context, self._host(context).reboot)
        return EMPTY

    def SetClock(self, request, context):
        if request.acceleration < 0 or request.advance_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "acceleration and advance_seconds must be >= 0")
        if request.acceleration:
            self.clock.set_acceleration(request.acceleration)
        if request.advance_seconds:
            self.clock.advance(request.advance_seconds)
        return self.GetClock(request, context)

    def GetClock(self, request, context):
        return convert.clock_to_pb(ClockInfo(self.clock.now(), self.clock.acceleration))

    def SetAgent(self, request, context):
        host = self._host(context)
        host.set_agent_up(request.up)
        return simpb.AgentState(up=host.agent_up)

    def GetAgent(self, request, context):
        return simpb.AgentState(up=self._host(context).agent_up)


def add_sim_admin(resolver: HostResolver, clock: SimClock):
    """An `extra_servicers` hook for hardware.agent.server.serve."""

    def add(server: grpc.Server) -> None:
        simadmin_pb2_grpc.add_SimAdminServicer_to_server(SimAdminServicer(resolver, clock), server)

    return add
