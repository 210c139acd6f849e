"""gan-dist: train image-repair GANs on one laptop or many GPU nodes, tracked in MLflow."""

__version__ = "0.1.0"
