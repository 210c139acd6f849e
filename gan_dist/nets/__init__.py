"""Generators and discriminators behind registries (name -> builder), as in BasicSR.

A family registers itself in its own module; recipes name it (`model.generator.name`). Every
generator is wrapped in `RepairNet`, which feeds it the damaged image plus the mask and, for
inpainting, pastes the known pixels back over its output, so that what is trained, evaluated
and exported is the same function. With `model.prefill` (biharmonic by default) the holes
are first filled by diffusion (see `prefill.py`) and the generator's output is a correction
added to that fill.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from gan_dist.recipe import DiscriminatorConfig, ModelConfig

GENERATORS: dict[str, Callable[..., nn.Module]] = {}
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {}


def register(table: dict[str, Callable[..., nn.Module]], name: str):
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        table[name] = builder
        return builder

    return add


class RepairNet(nn.Module):
    """(damaged, mask) -> repaired image in [-1, 1]."""

    def __init__(self, body: nn.Module, composite: bool, prefill: str = "none") -> None:
        super().__init__()
        self.body, self.composite, self.prefill = body, composite, prefill
        if prefill != "none":
            # The correction starts at zero, so an untrained net returns the classical fill.
            last = [m for m in body.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
            nn.init.zeros_(last[-1].weight)
            if last[-1].bias is not None:
                nn.init.zeros_(last[-1].bias)

    def forward(
        self, damaged: torch.Tensor, mask: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`start`: the prefill, when the data pipeline already computed it (training)."""
        if self.prefill != "none":
            from gan_dist.nets.prefill import fill_holes

            if start is None:
                start = fill_holes(damaged, 1 - mask, self.prefill)
            out = (start + self.body(torch.cat([start, mask], dim=1))).clamp(-1, 1)
        else:
            out = self.body(torch.cat([damaged, mask], dim=1))
        if self.composite:
            out = mask * out + (1 - mask) * damaged
        return out


def build_generator(model: ModelConfig, channels: int, image_size: int) -> RepairNet:
    _load_families()
    cfg = model.generator
    body = GENERATORS[cfg.name](
        cfg, in_channels=channels + 1, out_channels=channels, image_size=image_size
    )
    return RepairNet(body, model.composite, model.prefill)


def build_discriminator(cfg: DiscriminatorConfig, channels: int, image_size: int) -> nn.Module:
    """Conditional: it sees damaged image, mask and candidate (2C + 1 channels)."""
    from gan_dist.nets.layers import apply_spectral_norm

    _load_families()
    net = DISCRIMINATORS[cfg.name](cfg, in_channels=2 * channels + 1, image_size=image_size)
    return apply_spectral_norm(net) if cfg.spectral_norm else net


def _load_families() -> None:
    from gan_dist.nets import dcgan, ffc, patchgan, resnet, unet  # noqa: F401 - they register
