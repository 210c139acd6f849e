"""Per-pixel noise for generators that synthesise texture (`model.noise`).

A net that sees only the smooth prefill in a hole has nothing to make grain from: any fixed
function of it is as flat as its input, and a texture loss then only pushes every pixel up
and down at random. Injected noise is what StyleGAN (Karras et al. 2019) and CoModGAN
(Zhao et al. 2021) give their generators for stochastic detail. Training draws fresh
Gaussian noise; inference draws it from a hash of each pixel's position in the whole image,
so a repair is the same at every run, and overlapping tiles see the same noise where they
overlap (no seam where tiles meet).
"""

from __future__ import annotations

import math

import torch

_LOW32 = 0xFFFFFFFF


def _hash32(h: torch.Tensor) -> torch.Tensor:
    """An integer hash of int64 values in [0, 2**32) (the multiply-xorshift of
    Thomas Mueller's `hash32`; its multiplier < 2**27 keeps products inside int64)."""
    for _ in range(2):
        h = (((h >> 16) ^ h) * 0x45D9F3B) & _LOW32
    return (h >> 16) ^ h


def pixel_noise(
    batch: int,
    height: int,
    width: int,
    origins: torch.Tensor | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard normal noise (B, 1, H, W) float32, a function of each pixel's position alone:
    pixel (y, x) of item i is pixel (origins[i, 0] + y, origins[i, 1] + x) of the whole
    image. origins: (B, 2) integer top-left corners in px (None: all at 0; anything else
    raises ValueError). Box-Muller on two
    32-bit hashes of the position: the row is hashed, then the column into it, so no two
    positions of an image under 2**32 px a side share a key."""
    if origins is None:
        origins = torch.zeros(batch, 2, dtype=torch.int64)
    if tuple(origins.shape) != (batch, 2) or origins.is_floating_point():
        raise ValueError(
            f"pixel_noise: origins must be ({batch}, 2) integers, got {tuple(origins.shape)} "
            f"{origins.dtype}"
        )
    origins = origins.to(device=device, dtype=torch.int64)
    rows = origins[:, 0, None, None] + torch.arange(height, device=device)[None, :, None]
    cols = origins[:, 1, None, None] + torch.arange(width, device=device)[None, None, :]
    first = _hash32(_hash32((rows & _LOW32) ^ (seed & _LOW32)) ^ (cols & _LOW32))
    second = _hash32(first ^ 0x9E3779B9)
    u1 = (first.double() + 0.5) / 2**32
    u2 = (second.double() + 0.5) / 2**32
    z = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    return z.float()[:, None]
