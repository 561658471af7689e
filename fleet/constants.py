"""Fleet-wide constants and choices that are not states."""

from django.db import models


class IommuBackend(models.TextChoices):
    VFIO_TYPE1 = "vfio-type1", "VFIO type1"
    IOMMUFD = "iommufd", "IOMMUFD"


class PlugMode(models.TextChoices):
    HOT = "hot", "Hot-plug, one GPU after another"
    COLD = "cold", "Cold-plug at VM start"


class KernelGeneration(models.TextChoices):
    """A coarse class shown next to the host kernel's version (`fixed`: huge-pfnmap VFIO, 6.12+).
    The boot prediction reads the version itself (`Server.host_kernel_version`)."""

    OLD = "old", "Old (4 KiB BAR mapping)"
    FIXED = "fixed", "Fixed (huge-chunk BAR mapping)"



class GuestFirmware(models.TextChoices):
    OVMF = "ovmf", "OVMF (UEFI)"
    SEABIOS = "seabios", "SeaBIOS"


class InitSystem(models.TextChoices):
    SYSTEMD = "systemd", "systemd"
    NVRC = "nvrc", "NVRC"


# How long a GPU or server may stay in a transitional state before the console marks it overdue
# (seconds; the simulated clock runs these 60 times faster, but the operator's patience does not).
STATE_LIMITS_S = {
    "reserved": 5 * 60,
    "scrubbing": 15 * 60,
    "leveling": 20 * 60,
    "draining": 60 * 60,
}
