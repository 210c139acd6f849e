"""Where versions registered from 2026-12-03 to 2026-12-05 import repair's entry point from;
new code imports it from `gan_dist.repair.files`. Nothing inside gan_dist imports this
module."""

from gan_dist.repair.files import BATCH, OVERLAP, TILE, repair_bytes

__all__ = ["BATCH", "OVERLAP", "TILE", "repair_bytes"]
