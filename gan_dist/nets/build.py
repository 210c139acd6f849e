"""Generators and discriminators built from the families a recipe names, with their memory
checked before the weights are allocated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from gan_dist.nets.repair_net import RepairNet

if TYPE_CHECKING:
    from gan_dist.config.recipe import DiscriminatorConfig, ModelConfig


def build_generator(
    model: ModelConfig, channels: int, image_size: int, copies: int = 1
) -> RepairNet:
    """The recipe's generator family (`config/families.py`), wrapped in RepairNet. `copies`: how
    many times its weights' size the caller will hold (1 to repair; training holds
    gradients, two Adam moments and the EMA too), checked against free memory before the
    net is allocated (see `contract.built`). Raises UnknownFamily when its family is
    neither built in nor installed, PluginError when a plugin's net breaks its contract
    or would not fit."""
    from gan_dist.config.families import registry
    from gan_dist.core.prefill import prefill_parts
    from gan_dist.nets.contract import built

    family = registry("generator").get(model.generator.name)
    fills = len(prefill_parts(model.prefill))  # "none" counts one: the damaged image
    dims = {"in_channels": fills * channels + 1 + model.noise, "out_channels": channels}
    body = built(family, "generator", model.generator.settings, dims, image_size, copies)
    return RepairNet(body, model.composite, model.prefill, model.noise, model.correction_lowpass)


def build_discriminator(
    cfg: DiscriminatorConfig, channels: int, image_size: int, copies: int = 1
) -> nn.Module:
    """Conditional: it sees damaged image, mask and candidate (2C + 1 channels). `copies`
    and errors as `build_generator`."""
    from gan_dist.config.families import registry
    from gan_dist.nets.contract import built
    from gan_dist.nets.layers import apply_spectral_norm

    family = registry("discriminator").get(cfg.name)
    dims = {"in_channels": 2 * channels + 1}
    net = built(family, "discriminator", cfg.settings, dims, image_size, copies)
    return apply_spectral_norm(net) if cfg.spectral_norm else net
