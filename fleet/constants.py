"""Fleet-wide constants and choices that are not states."""

from django.db import models


class IommuBackend(models.TextChoices):
    VFIO_TYPE1 = "vfio-type1", "VFIO type1"
    IOMMUFD = "iommufd", "IOMMUFD"


class PlugMode(models.TextChoices):
    HOT = "hot", "Hot-plug, one GPU after another"
    COLD = "cold", "Cold-plug at VM start"


class KernelGeneration(models.TextChoices):
    """Host kernel generation: `old` maps large BARs in 4 KiB steps (seconds per GPU); `fixed` does not."""

    OLD = "old", "Old (4 KiB BAR mapping)"
    FIXED = "fixed", "Fixed (huge-chunk BAR mapping)"



# How long a GPU or server may stay in a transitional state before the console marks it overdue
# (seconds; the simulated clock runs these 60 times faster, but the operator's patience does not).
STATE_LIMITS_S = {
    "reserved": 5 * 60,
    "scrubbing": 15 * 60,
    "leveling": 20 * 60,
    "draining": 60 * 60,
}
