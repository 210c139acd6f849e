"""The generators, discriminators and adversarial objectives built into gan-dist, with their
typed settings (the recipe keys beside `name`). Builders live in `nets/` and
`train/losses.py` and are imported only when a net is built, so validating a recipe never
imports torch. Installed packages add their own families the same way (`families.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, StrictBool

from gan_dist.config.family import Family, Settings

MAX_CHANNELS = 4096  # widest first layer a recipe may ask for (memory bound, not a taste)
FFC_DEPTH = 3  # ffc_resnet's downsamplings when depth is unset (LaMa's)
Norm = Literal["batch", "instance", "layer", "none"]


def downsamplings(image_size: int, smallest: int = 4, most: int = 8) -> int:
    """How many stride-2 steps take image_size down to `smallest` pixels (at most `most`)."""
    steps = 0
    while image_size // 2 >= smallest and steps < most:
        image_size //= 2
        steps += 1
    return steps


class _Width(Settings):
    base_channels: PositiveInt = Field(64, le=MAX_CHANNELS, description="first layer's width")
    norm: Norm = "batch"


class UNetSettings(_Width):
    depth: PositiveInt | None = Field(None, description="down-samplings; None: from the size")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    gated: StrictBool = Field(
        False, description="gated convolutions (DeepFill v2), a learned gate per pixel"
    )


class DCGANSettings(_Width):
    depth: PositiveInt | None = Field(None, description="down-samplings; None: from the size")


class ResNetSettings(_Width):
    blocks: PositiveInt = Field(9, description="residual blocks at 1/4 resolution")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class FFCResNetSettings(_Width):
    depth: PositiveInt | None = Field(None, description=f"down-samplings; None: {FFC_DEPTH}")
    blocks: PositiveInt = Field(9, description="FFC residual blocks")
    global_ratio: float = Field(
        0.75, gt=0.0, lt=1.0, description="share of channels in the Fourier (image-wide) branch"
    )


class PatchGANSettings(_Width):
    layers: PositiveInt = Field(3, description="strided conv layers")


def _by_depth(settings: UNetSettings | DCGANSettings, image_size: int) -> int:
    return 2 ** (settings.depth or downsamplings(image_size))


GENERATORS = {
    "unet": Family(
        "gan_dist.nets.unet:build",
        UNetSettings,
        _by_depth,
        about="pix2pix's skip U-Net; optional gated convolutions (DeepFill v2)",
    ),
    "dcgan": Family(
        "gan_dist.nets.dcgan:build_generator",
        DCGANSettings,
        _by_depth,
        about="DCGAN encoder-decoder",
    ),
    "resnet": Family(
        "gan_dist.nets.resnet:build",
        ResNetSettings,
        lambda settings, image_size: 4,
        about="pix2pix/CycleGAN ResNet: two down-samplings, residual blocks",
    ),
    "ffc_resnet": Family(
        "gan_dist.nets.ffc:build",
        FFCResNetSettings,
        lambda settings, image_size: 2 ** (settings.depth or FFC_DEPTH),
        about="LaMa's fast Fourier convolution ResNet (image-wide receptive field)",
    ),
}

DISCRIMINATORS = {
    "patchgan": Family(
        "gan_dist.nets.patchgan:build", PatchGANSettings, about="PatchGAN: a logit per patch"
    ),
    "dcgan": Family(
        "gan_dist.nets.dcgan:build_discriminator", _Width, about="global: a logit per image"
    ),
}

OBJECTIVES = {
    "bce": Family("gan_dist.train.losses:non_saturating", about="non-saturating (Goodfellow 2014)"),
    "lsgan": Family("gan_dist.train.losses:least_squares", about="least squares (Mao 2017)"),
    "hinge": Family("gan_dist.train.losses:hinge", about="hinge (Miyato 2018)"),
    "wgan-gp": Family(
        "gan_dist.train.losses:wasserstein",
        critic=True,
        about="Wasserstein critic (Gulrajani 2017)",
    ),
}

BUILTINS = {"generator": GENERATORS, "discriminator": DISCRIMINATORS, "objective": OBJECTIVES}
