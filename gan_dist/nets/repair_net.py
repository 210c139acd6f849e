"""`RepairNet`: the function every trained generator is wrapped in, so that what is trained,
evaluated and exported is the same (see the package docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    pass


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
