"""Generators and discriminators, built from the families a recipe names (`registry.py`;
the built-in ones are listed in `families.py`, their code is in this package). Every
generator is wrapped in `RepairNet`, which feeds it the damaged image plus the mask and, for
inpainting, pastes the known pixels back over its output, so that what is trained, evaluated
and exported is the same function. With `model.prefill` (biharmonic by default) the holes
are first filled by diffusion (see `prefill.py`) and the generator's output is a correction
added to that fill. With `model.noise` the generator also sees a channel of Gaussian noise
inside the holes (`noise.py`), from which it can synthesise grain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from gan_dist.config.recipe import DiscriminatorConfig, ModelConfig


class RepairNet(nn.Module):
    """(damaged, mask) -> repaired image in [-1, 1]."""

    def __init__(
        self,
        body: nn.Module,
        composite: bool,
        prefill: str = "none",
        noise: bool = False,
        correction_lowpass: float = 0.0,
    ) -> None:
        super().__init__()
        self.body, self.composite, self.prefill, self.noise = body, composite, prefill, noise
        self.correction_lowpass = correction_lowpass
        last = [m for m in body.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        if prefill != "none" and last:
            # The correction starts at zero, so an untrained net returns the classical fill.
            nn.init.zeros_(last[-1].weight)
            if last[-1].bias is not None:
                nn.init.zeros_(last[-1].bias)

    def forward(
        self,
        damaged: torch.Tensor,
        mask: torch.Tensor,
        start: torch.Tensor | None = None,
        origins: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`start`: the prefill, when the data pipeline already computed it (training).
        `origins` (B, 2) int: each input's top-left corner (px) in its whole image, where the
        input is a tile, so that `model.noise` is drawn by position (None: at 0, 0)."""
        extra = [mask]
        if self.noise:
            if self.training:
                z = torch.randn_like(mask)
            else:
                from gan_dist.nets.noise import pixel_noise

                z = pixel_noise(len(mask), *mask.shape[-2:], origins, device=mask.device)
            extra.append(z.to(mask.dtype) * mask)
        if self.prefill != "none":
            from gan_dist.core.prefill import fill_holes

            if start is None:
                start = fill_holes(damaged, 1 - mask, self.prefill)
            base = start[:, : damaged.shape[1]]  # the fill corrected; any others are input
            correction = self.body(torch.cat([start, *extra], dim=1))
            if self.correction_lowpass:
                from gan_dist.core.filters import lowpass

                correction = lowpass(correction, self.correction_lowpass)
            out = (base + correction).clamp(-1, 1)
        else:
            out = self.body(torch.cat([damaged, *extra], dim=1))
        if self.composite:
            out = mask * out + (1 - mask) * damaged
        return out


class _NoCorrection(nn.Module):
    """A generator body that corrects nothing: (B, *, H, W) -> zeros (B, channels, H, W). Its
    one empty tensor tells callers the device."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(len(x), self.channels, *x.shape[-2:])


def prefill_only(prefill: str, composite: bool, channels: int) -> RepairNet:
    """The classical prefill alone (`model.prefill`), called as a generator is: what a
    trained one is measured against (validation's val/prefill/*, `gan-dist eval`'s
    baseline), so a user sees what the net adds to it."""
    return RepairNet(_NoCorrection(channels), composite, prefill)


def build_generator(
    model: ModelConfig, channels: int, image_size: int, copies: int = 1
) -> RepairNet:
    """The recipe's generator family (`registry.py`), wrapped in RepairNet. `copies`: how
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
