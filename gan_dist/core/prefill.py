"""A classical first guess for the holes, so the generator learns a correction, not a fill.
(The exemplar fill, `model.prefill: patchmatch`, is in `exemplar.py`.)

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

PREFILLS = ("biharmonic", "harmonic", "patchmatch", "patchmatch+biharmonic", "none")


# px: `patchmatch+biharmonic` corrects the smooth fill plus the exemplar fill's detail above
# this Gaussian sigma. Unlearned, on the quality benchmark's held-out photos (hole PSNR dB /
# hole SWD): the smooth fill 23.96 / 149.7, the copy alone 22.67 / 54.8, this blend 23.04 /
# 45.1 (at 3 px 22.74 / 25.7, at 4 px 22.49 / 19.3). Splitting the smooth fill too (its
# low-pass plus the copy's detail) scored 23.06 / 57.5 at 4 px and 23.22 / 70.5 at 2 px:
# dominated, the smooth fill's mid frequencies next to the hole's border being right.
BLEND_SIGMA = 2.0


def prefill_parts(kind: str) -> list[str]:
    """The fills a prefill kind is made of: `patchmatch+biharmonic` is an exemplar fill and
    a smooth one (see `stack_fills`)."""
    return kind.split("+")


def stack_fills(fills: list[torch.Tensor], known: torch.Tensor) -> torch.Tensor:
    """The start of a prefill made of several fills (`prefill_parts`), each (B, C, H, W) in
    [-1, 1] with known (B, 1, H, W): one fill is itself; an exemplar fill and a smooth one
    give (B, 2C, H, W), first what the generator corrects, the smooth fill plus the
    exemplar's detail (above BLEND_SIGMA px; known pixels kept), then the smooth
    fill, as more input. A copy's colours are off where a smooth fill's are closer, its
    detail is what no smooth fill has (the perception-distortion split by frequency, Blau
    and Michaeli 2018)."""
    if len(fills) == 1:
        return fills[0]
    from gan_dist.core.filters import lowpass

    exemplar, smooth = fills
    detail = exemplar.float() - lowpass(exemplar.float(), BLEND_SIGMA)
    blend = (smooth.float() + detail).clamp(-1, 1).to(exemplar.dtype)
    blend = torch.where(known > 0.5, exemplar, blend)
    return torch.cat([blend, smooth], dim=1)


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
    image with unknown pixels replaced; an image with nothing known becomes 0 (mid-grey).
    Same dtype and memory layout as `image`, values in [-1, 1] (a biharmonic fill overshoots
    near steep edges; clipped here, the one prefill training, validation and tiled repair
    share). `kind`: biharmonic or harmonic (this module),
    or patchmatch, an exemplar fill (`exemplar.py`); patchmatch+biharmonic stacks the two
    (`stack_fills`), (B, 2C, H, W)."""
    parts = prefill_parts(kind)
    if len(parts) > 1:  # (B, 2C, H, W)
        return stack_fills([fill_holes(image, known, part) for part in parts], known)
    if bool(known.all()):  # global damage (noise, blur): nothing to fill
        return image
    if kind == "patchmatch":
        from gan_dist.core.exemplar import patchmatch_fill

        return patchmatch_fill(image, known)
    layout = (
        torch.channels_last
        if image.dim() == 4 and image.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    # an iterative solver: fp32 and a plain layout, also inside a bf16 autocast region with
    # channels_last inputs (bf16 steps would not converge; strided ones run several x slower)
    with torch.autocast(image.device.type, enabled=False):
        x, w = image.float().contiguous(), known.float().contiguous()
        fill = _multigrid(x * w, w, kind).clamp_(-1, 1)
    return fill.to(image.dtype).contiguous(memory_format=layout)


def _multigrid(x: torch.Tensor, w: torch.Tensor, kind: str) -> torch.Tensor:
    """Pull (mask-weighted means down the pyramid), then push with smoothing steps."""
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
        stencil = _Stencil(fill)
        fill = stencil.harmonic(fill, free, HARMONIC_STEPS)
        if kind == "biharmonic":
            fill = stencil.biharmonic(
                fill, free * BIHARMONIC_DAMPING, BIHARMONIC_STEPS, BIHARMONIC_MOMENTUM
            )
    return fill


class _Stencil:
    """Jacobi and biharmonic iterations on one pyramid level, in place in a few buffers.

    The arithmetic is the plain formulas' own, operation for operation (so results are
    bit-identical), but without a new tensor per operation: allocating and faulting in fresh
    pages cost several times the arithmetic (3.6x at 128 px on one CPU core)."""

    def __init__(self, like: torch.Tensor) -> None:
        *lead, h, w = like.shape
        p = like.new_empty(*lead, h + 2, w + 2)
        self.a, self.b = torch.empty_like(like), torch.empty_like(like)
        # views made once: on the small levels, making them cost more than the arithmetic
        self.inner = p[..., 1:-1, 1:-1]
        self.rows = ((p[..., 0, 1:-1], 0), (p[..., -1, 1:-1], -1))
        self.cols = ((p[..., :, 0], p[..., :, 1]), (p[..., :, -1], p[..., :, -2]))
        self.up, self.down = p[..., :-2, 1:-1], p[..., 2:, 1:-1]
        self.left, self.right = p[..., 1:-1, :-2], p[..., 1:-1, 2:]

    def _neighbour_mean(self, u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Mean of the four neighbours; replicate padding makes the border a no-flux
        boundary. Slicing rather than a grouped convolution: several times faster on CPU."""
        self.inner.copy_(u)
        for edge, row in self.rows:
            edge.copy_(u[..., row, :])
        for edge, inside in self.cols:
            edge.copy_(inside)
        torch.add(self.up, self.down, out=out)
        return out.add_(self.left).add_(self.right).div_(4)

    def _laplacian(self, u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._neighbour_mean(u, out).sub_(u).mul_(4)

    def harmonic(self, fill: torch.Tensor, free: torch.Tensor, steps: int) -> torch.Tensor:
        """`steps` of fill + free * (mean of neighbours - fill)."""
        fill, spare = fill.clone(), self.a
        for _ in range(steps):
            update = self._neighbour_mean(fill, spare).sub_(fill).mul_(free).add_(fill)
            fill, spare = update, fill
        return fill.clone()

    def biharmonic(
        self, fill: torch.Tensor, step: torch.Tensor, steps: int, momentum: float
    ) -> torch.Tensor:
        """`steps` of fill - step * L(L(fill)) + momentum * (fill - previous): gradient
        descent on the biharmonic energy with heavy-ball momentum (L: the 5-point Laplacian)."""
        fill, previous, spare = fill.clone(), fill.clone(), self.b
        for _ in range(steps):
            update = self._laplacian(self._laplacian(fill, self.a), spare).mul_(step)
            torch.sub(fill, update, out=update)
            update.add_(previous.sub_(fill).mul_(-momentum))  # momentum * (fill - previous)
            previous, fill, spare = fill, update, previous
        return fill
