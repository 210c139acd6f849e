"""Sliced Wasserstein distance (SWD) between the local texture of repairs and of originals.

Karras et al. 2018 (Progressive GANs, appendix D): 7x7 patches drawn from each level of a
Laplacian pyramid, each descriptor set normalised per colour channel, compared through the
1-D Wasserstein distances of random projections (sorted projections, mean absolute gap).
It needs no pretrained weights, and it sees what PSNR does not: a hole filled with a smooth,
flat patch where the original had grain scores far from the original even when its PSNR is
high. Here patches are centred inside the hole or within `RING` px of it (the repair and its
seam), so the known pixels elsewhere do not dilute the figure.

Reported like the paper's: distances x 1e3, per level (`swd_l0` finest) and their mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PATCH = 7
LEVELS = 3  # 128 px images: 128, 64, 32 px levels
RING = 4  # px around the hole whose patches count as the repair's surroundings
PROJECTIONS = 512
# The least spread a descriptor is scaled by, in [0, 1] units: 8 levels of 8 bits. Scored
# against a flat original, any difference is a large multiple of a tiny spread: with one
# level as the floor, a fill within a third of a level scored 88 and one a level off 243, more
# than a smudge in texture. Texture spreads far more than 8 levels, and the spread is pooled
# over the whole set scored, so a varied set never meets this floor.
FLOOR = 8 / 255


def laplacian_pyramid(images: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
    """images (B, C, H, W) -> `levels` band-pass images, finest first; the last level is the
    low-pass remainder (as the paper's 16 px level). Each level halves H and W."""
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=images.device) / 16
    kernel = (kernel[:, None] * kernel[None, :]).expand(images.shape[1], 1, 5, 5)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])

    out, current = [], images
    for _ in range(levels - 1):
        down = blur(current)[..., ::2, ::2]
        up = F.interpolate(down, size=current.shape[-2:], mode="bilinear", align_corners=False)
        out.append(current - up)
        current = down
    return [*out, current]


def hole_patches(
    level: torch.Tensor, region: torch.Tensor, count: int, generator: torch.Generator
) -> torch.Tensor:
    """Up to `count` PATCHxPATCH patches per image whose centres lie in `region`
    ((B, 1, H, W) bool at this level's size), as (N, C, PATCH * PATCH) descriptors.
    Images with no region pixel contribute none."""
    pad = PATCH // 2
    padded = F.pad(level, (pad, pad, pad, pad), mode="reflect")
    patches = []
    for i in range(len(level)):
        where = torch.nonzero(region[i, 0].flatten(), as_tuple=True)[0]
        if len(where) == 0:
            continue
        pick = where[torch.randperm(len(where), generator=generator)[:count].to(where.device)]
        columns = F.unfold(padded[i : i + 1], PATCH)[0]  # (C * PATCH^2, H * W)
        patches.append(columns[:, pick].T.reshape(len(pick), level.shape[1], PATCH * PATCH))
    if not patches:
        return level.new_zeros(0, level.shape[1], PATCH * PATCH)
    return torch.cat(patches)


def sliced_wasserstein(
    a: torch.Tensor,
    b: torch.Tensor,
    generator: torch.Generator,
    projections: int = PROJECTIONS,
    floor: float = FLOOR,
) -> float:
    """SWD between descriptor sets a (N, C, P) and b (M, C, P), 0 for identical sets in any
    order; unequal sizes are compared at their common quantiles. Both are normalised per
    channel by the statistics of the two together: the paper normalises each set on its
    own, which would stretch a flat repair's faint detail up to the original's contrast and
    hide exactly the texture loss this measures. The spread is floored at `floor` (FLOOR: 8
    levels of 8-bit [0, 1] images): a flat region has almost none, and dividing by it would
    blow a sub-level difference up to a score far above that of a smudged texture. Raises
    ValueError for an empty set."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError("sliced_wasserstein: an empty patch set")
    both = torch.cat([a, b]).double()
    mean = both.mean(dim=(0, 2), keepdim=True)
    std = both.std(dim=(0, 2), keepdim=True).clamp_min(floor)
    a, b = ((x.double() - mean) / std for x in (a, b))
    a, b = a.flatten(1), b.flatten(1)
    dirs = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(a.device)
    pa, pb = (a @ dirs).sort(dim=0).values, (b @ dirs).sort(dim=0).values
    n = min(len(pa), len(pb))
    q = (torch.arange(n, device=a.device, dtype=torch.float64) + 0.5) / n
    pa, pb = pa[(q * len(pa)).long()], pb[(q * len(pb)).long()]
    return float((pa - pb).abs().mean())


class HoleSWD:
    """Collects patches of repairs and originals around the holes over a validation pass,
    then scores them: `add` per batch (images in [0, 1], masks 1 in the hole), `compute`
    once. At most `per_image` patches per image and level, drawn with a fixed seed."""

    def __init__(self, per_image: int = 64, seed: int = 0) -> None:
        self.per_image, self.seed, self.images = per_image, seed, 0
        self.generator = torch.Generator().manual_seed(seed)  # the projections
        self.fake: list[list[torch.Tensor]] = [[] for _ in range(LEVELS)]
        self.real: list[list[torch.Tensor]] = [[] for _ in range(LEVELS)]

    def add(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        region = F.max_pool2d(mask.float(), 2 * RING + 1, stride=1, padding=RING) > 0
        levels = zip(
            laplacian_pyramid(pred.float()), laplacian_pyramid(target.float()), strict=True
        )
        for lvl, (p, t) in enumerate(levels):
            here = F.adaptive_max_pool2d(region.float(), p.shape[-2:]) > 0
            for i in range(len(p)):  # centres drawn per image: the score ignores batching
                draw = self.seed * 1_000_003 + (self.images + i) * LEVELS + lvl
                for side, image in ((self.fake, p), (self.real, t)):  # same centres in both
                    g = torch.Generator().manual_seed(draw)
                    side[lvl].append(
                        hole_patches(image[i : i + 1], here[i : i + 1], self.per_image, g).cpu()
                    )
        self.images += len(pred)

    def compute(self) -> dict[str, float]:
        """{"swd_l0": ..., "swd": mean over levels} x 1e3; empty when no image had a hole."""
        out = {}
        for lvl in range(LEVELS):
            if sum(len(p) for p in self.fake[lvl]) < 2:  # nothing scored, or no hole
                return {}
            fake, real = torch.cat(self.fake[lvl]), torch.cat(self.real[lvl])
            out[f"swd_l{lvl}"] = 1e3 * sliced_wasserstein(fake, real, self.generator)
        out["swd"] = sum(out.values()) / LEVELS
        return out
