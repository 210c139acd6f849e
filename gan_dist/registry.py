"""Where plugins written before the layers (issue 26) import a family's types from; new code
imports them from `gan_dist.config.family`. Nothing inside gan_dist imports this module."""

from gan_dist.config.family import Family, Settings

__all__ = ["Family", "Settings"]
