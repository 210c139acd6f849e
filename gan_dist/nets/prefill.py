"""A classical first guess for the holes, so the generator learns a correction, not a fill.

A small net trained for minutes paints holes worse than plain diffusion does (our quality
benchmark measured it: several dB below OpenCV's Telea inside the hole), because it must
first learn to carry colour inward across the whole hole. A smooth harmonic fill does that
part exactly and for free; the generator then only adds what diffusion cannot (edges,
texture), like the coarse stage of coarse-to-fine inpainting nets or the interpolation
that VDSR-style super-resolution nets refine.

The fill is multigrid: pull (mask-weighted means down a pyramid) gives every hole pixel a
value from the nearest known pixels, then push (coarse to fine) smooths each level with a few
Jacobi steps of Laplace's equation, known pixels held fixed. Cost is O(pixels) whatever the
hole size; no gradients flow through it (it only sees the input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def harmonic_fill(image: torch.Tensor, known: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """image (B, C, H, W), known (B, 1, H, W) with 1 where the pixel is kept. Returns the
    image with unknown pixels replaced; an image with nothing known becomes 0 (mid-grey)."""
    if bool(known.all()):  # global damage (noise, blur): nothing to fill
        return image
    dtype = image.dtype
    x, w = image.float() * known.float(), known.float()
    pyramid = [(x, w)]
    while max(x.shape[-2:]) > 1:
        x, w = F.avg_pool2d(x, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)
        pyramid.append((x, w))
    fill = x / w.clamp_min(1e-8)
    for x, w in reversed(pyramid[:-1]):
        mean = x / w.clamp_min(1e-8)
        fixed = (w > 0).float()
        coarse = F.interpolate(fill, size=x.shape[-2:], mode="bilinear", align_corners=False)
        fill = _relax(fixed * mean + (1 - fixed) * coarse, mean, fixed, iters)
    return fill.to(dtype)


def _relax(fill: torch.Tensor, target: torch.Tensor, fixed: torch.Tensor, iters: int):
    """Jacobi steps of the discrete Laplace equation: each free pixel becomes the mean of its
    four neighbours; replicate padding makes the border a no-flux boundary."""
    channels = fill.shape[1]
    kernel = fill.new_tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]])
    kernel = kernel.expand(channels, 1, 3, 3)
    for _ in range(iters):
        neighbours = F.conv2d(F.pad(fill, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)
        fill = fixed * target + (1 - fixed) * neighbours
    return fill
