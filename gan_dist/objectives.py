"""Where plugins written before the layers (issue 26) import `Adversarial` from; new code
imports it from `gan_dist.train.losses`. Nothing inside gan_dist imports this module."""

from gan_dist.train.losses import Adversarial

__all__ = ["Adversarial"]
