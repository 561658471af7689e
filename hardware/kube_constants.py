"""Names shared by the Kubernetes adapter, the simulated cluster, the device plugin and `deploy/`.

Every label, annotation, API group and finalizer the project writes into a cluster is spelled here
once; the manifests under `deploy/` are checked against these values by the tests.
"""

API_GROUP = "gpuconsole.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

TENANCY_KIND = "Tenancy"
TENANCY_PLURAL = "tenancies"
GPULEASE_KIND = "GpuLease"
GPULEASE_PLURAL = "gpuleases"

# Only the console removes it, after the lease's GPUs were scrubbed and their firmware levelled.
GPULEASE_FINALIZER = f"{API_GROUP}/scrub-and-level"

TENANT_NAMESPACE_PREFIX = "tenant-"
NETWORK_POLICY_NAME = "ingress-egress-rules"  # seed 001, "Networking"
CILIUM_GROUP = "cilium.io"
CILIUM_VERSION = "v2"
CILIUM_POLICY_PLURAL = "ciliumnetworkpolicies"
CILIUM_NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "gpu-console"
TENANT_LABEL = f"{API_GROUP}/tenant"
LEASE_LABEL = f"{API_GROUP}/lease"
GPULEASE_ANNOTATION = f"{API_GROUP}/gpulease"
GPU_INDEXES_ANNOTATION = f"{API_GROUP}/gpu-indexes"
# The boot the console predicted for the lease's VM (seconds), for operators reading the pod.
PREDICTED_BOOT_ANNOTATION = f"{API_GROUP}/predicted-boot-seconds"
# Kata's per-pod limit on creating the container, VM boot included (seconds; Kata's default is 60).
# The runtime honours it only when its configuration lists it in `enable_annotations`, and the
# kubelet's `runtimeRequestTimeout` must be at least as long.
KATA_CREATE_CONTAINER_TIMEOUT_ANNOTATION = "io.katacontainers.config.runtime.create_container_timeout"

RUNTIME_CLASS = "kata-qemu-nvidia-gpu"
GPU_RESOURCE = "nvidia.com/gpu"
CDI_KIND = "nvidia.com/gpu"
CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
# CDI's AnnotationKey(plugin, deviceID) convention: "cdi.k8s.io/<plugin>_<device id>".
CDI_ANNOTATION_PLUGIN = "gpu-console"
HOSTNAME_LABEL = "kubernetes.io/hostname"
LEASE_POD_PREFIX = "lease-"
LEASE_CONTAINER = "workload"


class TenancyPhase:
    """`Tenancy.status.phase` values."""

    PENDING = "Pending"
    READY = "Ready"
    FAILED = "Failed"


class GpuLeasePhase:
    """`GpuLease.status.phase` values; GPUs are handed out again only after `Levelled`."""

    RESERVED = "Reserved"
    RUNNING = "Running"
    RELEASING = "Releasing"
    SCRUBBING = "Scrubbing"
    LEVELING = "Leveling"
    LEVELLED = "Levelled"
    FAILED = "Failed"

    ALL = (RESERVED, RUNNING, RELEASING, SCRUBBING, LEVELING, LEVELLED, FAILED)


def tenant_namespace(tenant: str) -> str:
    """The namespace a tenant's pods run in."""
    return f"{TENANT_NAMESPACE_PREFIX}{tenant}"


def lease_pod_name(lease_id: str) -> str:
    """The pod that runs a lease's container."""
    return f"{LEASE_POD_PREFIX}{lease_id}"


def cdi_device_name(index: int) -> str:
    """Fully qualified CDI device name of GPU `index`, e.g. `nvidia.com/gpu=6`."""
    return f"{CDI_KIND}={index}"


def vm_id_for_pod(namespace: str, pod: str) -> str:
    """The id the node agent knows a pod's Kata VM by (WatchBoot): `<namespace>.<pod>`."""
    return f"{namespace}.{pod}"
