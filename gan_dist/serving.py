"""Where versions registered before the layers (issue 26) import the serving side from; new
code imports it from `gan_dist.repair.serving`. Nothing inside gan_dist imports this
module."""

from gan_dist.repair.serving import RepairService

__all__ = ["RepairService"]
