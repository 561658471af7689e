"""The kubelet Device Plugin (API v1beta1 over gRPC on a unix socket) for `nvidia.com/gpu`.

It announces the node's GPUs by index, refuses to hand out a GPU that no ready lease holds (still
scrubbing or levelling, or not leased at all), and answers Allocate with the GPUs' CDI names
(`nvidia.com/gpu=<index>`, resolved by containerd through `hardware.cdi`'s spec) and/or their
`/dev/vfio/<group>` device specs.

- `devices`: the GPUs the node offers and their health (`DeviceSource`).
- `leases`: which GPUs are leased and ready right now (`LeaseBook`), kept by the agent from the console.
- `servicer`: the `DevicePlugin` service.
- `server`: serve on the plugin socket and register with the kubelet (again after a kubelet restart).
- `inventory`: the devices from a host's inventory, kept in step with it (a GPU lost to Xid 79 goes Unhealthy).
- `node`: all of it for one node (CDI spec, health, socket, registration); the agent runs it with
  `--device-plugin`, on the lease book the console fills with SetGpuLeases.
- `__main__`: the same beside an agent, over gRPC (`python -m hardware.deviceplugin --agent ADDR`).
- `proto/api.proto`, `gen/`: the published API and its generated stubs (`python -m hardware.deviceplugin.generate`).
"""
