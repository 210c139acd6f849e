"""Where registered versions whose `pyfunc.py` predates the layers (issue 26) import the
loader from; new code imports it from `gan_dist.repair.model_file`. Nothing inside gan_dist
imports this module."""

from gan_dist.repair.model_file import load_files

__all__ = ["load_files"]
