"""Domain exceptions of the hardware boundary; the agent client maps gRPC status codes to these."""


class HardwareError(Exception):
    """Base class. `retryable` tells orchestration whether to try again with backoff."""

    retryable = False


class AgentUnavailable(HardwareError):
    """The node agent (or the fabric manager behind it) cannot be reached or is restarting."""

    retryable = True


class AgentTimeout(AgentUnavailable):
    """A call ran past its deadline."""


class NotFound(HardwareError):
    """Unknown GPU, partition, VM or device."""


class InvalidArgument(HardwareError):
    """The request itself is malformed (bad id, non-NVIDIA device, ...)."""


class FailedPrecondition(HardwareError):
    """The host is not in a state that allows it: partition in use, GPU in a running lease, ..."""


class GpuBusy(HardwareError):
    """Another operation (scrub, reset, firmware flash) on the GPU is still running on the host, e.g.
    one started for a worker that died: try again once it is done."""

    retryable = True


class PartitionInUse(FailedPrecondition):
    """The fabric manager refuses: the partition or one of its GPUs is already in an active partition."""


class PermissionDenied(HardwareError):
    """mTLS identity refused."""


class ClusterError(HardwareError):
    """A Kubernetes API error that is not transient."""


class ClusterUnavailable(ClusterError):
    """Kubernetes answered 5xx, timed out or could not be reached: retry with backoff."""

    retryable = True


class ClusterConflict(ClusterError):
    """409 that survived re-reading and retrying."""

    retryable = True


class FabricManagerVersionMismatch(FailedPrecondition):
    """The client's (guest driver's) version differs from the fabric manager's."""
