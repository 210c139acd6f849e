"""A classical first guess for the holes, so the generator learns a correction, not a fill.

A small net trained for minutes paints holes worse than plain diffusion does (our quality
benchmark measured it: several dB below OpenCV's Telea inside the hole), because it must
first learn to carry colour inward across the whole hole. A smooth fill does that part
exactly and for free; the generator then only adds what diffusion cannot (edges, texture),
like the coarse stage of coarse-to-fine inpainting nets or the interpolation that VDSR-style
super-resolution nets refine.

Both fills are multigrid. Pull (mask-weighted means down a pyramid) gives every hole pixel a
value from the nearest known pixels; push (coarse to fine) smooths each level with a few
Jacobi steps of Laplace's equation (`harmonic`: flat across the hole), then for `biharmonic`
with damped, momentum-accelerated steps of the biharmonic equation, which carries gradients,
not just values, into the hole (scikit-image's `inpaint_biharmonic` solves the same equation
exactly, much slower). Known pixels are held fixed. Cost is O(pixels) whatever the hole
size; no gradients flow through it (it only sees the input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PREFILLS = ("biharmonic", "harmonic", "none")
HARMONIC_STEPS = 10  # per level
BIHARMONIC_STEPS = 40  # per level
# Heavy-ball momentum on the damped biharmonic iteration: on the quality benchmark's held-out
# photos 40 steps went from 23.94 dB / SSIM 0.932 in the hole to 24.15 / 0.934, what 200
# plain steps reach (skimage's exact solve: 23.79 / 0.933), at the cost of 40.
BIHARMONIC_MOMENTUM = 0.9
# stable below 2 (1 + momentum) / 64, 64 being the largest eigenvalue of the stencil
BIHARMONIC_DAMPING = 0.6 / 20


@torch.no_grad()
def fill_holes(image: torch.Tensor, known: torch.Tensor, kind: str = "biharmonic") -> torch.Tensor:
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
        free = (w == 0).float()
        coarse = F.interpolate(fill, size=x.shape[-2:], mode="bilinear", align_corners=False)
        fill = mean * (1 - free) + coarse * free
        for _ in range(HARMONIC_STEPS):
            fill = fill + free * (_neighbour_mean(fill) - fill)
        if kind == "biharmonic":
            step, previous = free * BIHARMONIC_DAMPING, fill
            for _ in range(BIHARMONIC_STEPS):
                fill, previous = (
                    fill
                    - step * _laplacian(_laplacian(fill))
                    + BIHARMONIC_MOMENTUM * (fill - previous),
                    fill,
                )
    return fill.to(dtype)


def _neighbour_mean(u: torch.Tensor) -> torch.Tensor:
    """Mean of the four neighbours; replicate padding makes the border a no-flux boundary.
    Slicing rather than a grouped convolution: several times faster on CPU."""
    p = F.pad(u, (1, 1, 1, 1), mode="replicate")
    return (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4


def _laplacian(u: torch.Tensor) -> torch.Tensor:
    return 4 * (_neighbour_mean(u) - u)
