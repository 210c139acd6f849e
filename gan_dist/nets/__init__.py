"""Generators and discriminators behind registries (name -> builder), as in BasicSR.

A family registers itself in its own module; recipes name it (`model.generator.name`). Every
generator is wrapped in `RepairNet`, which feeds it the damaged image plus the mask and, for
inpainting, pastes the known pixels back over its output, so that what is trained, evaluated
and exported is the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from gan_dist.recipe import DiscriminatorConfig, GeneratorConfig

GENERATORS: dict[str, Callable[..., nn.Module]] = {}
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {}


def register(table: dict[str, Callable[..., nn.Module]], name: str):
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        table[name] = builder
        return builder

    return add


class RepairNet(nn.Module):
    """(damaged, mask) -> repaired image in [-1, 1]."""

    def __init__(self, body: nn.Module, composite: bool) -> None:
        super().__init__()
        self.body, self.composite = body, composite

    def forward(self, damaged: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.body(torch.cat([damaged, mask], dim=1))
        if self.composite:
            out = mask * out + (1 - mask) * damaged
        return out


def build_generator(
    cfg: GeneratorConfig, channels: int, image_size: int, composite: bool
) -> RepairNet:
    _load_families()
    body = GENERATORS[cfg.name](
        cfg, in_channels=channels + 1, out_channels=channels, image_size=image_size
    )
    return RepairNet(body, composite)


def build_discriminator(cfg: DiscriminatorConfig, channels: int, image_size: int) -> nn.Module:
    """Conditional: it sees damaged image, mask and candidate (2C + 1 channels)."""
    from gan_dist.nets.layers import apply_spectral_norm

    _load_families()
    net = DISCRIMINATORS[cfg.name](cfg, in_channels=2 * channels + 1, image_size=image_size)
    return apply_spectral_norm(net) if cfg.spectral_norm else net


def _load_families() -> None:
    from gan_dist.nets import dcgan, patchgan, resnet, unet  # noqa: F401 - they register
