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

import numpy as np
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
BAND_PIXELS = 1 << 20  # pixels of a band of rows of one image (`add_image`)
MARGIN = 32  # rows around a band, so that its pyramid is the image's within the band


def laplacian_pyramid(images: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
    """images (B, C, H, W) -> `levels` band-pass images, finest first; the last level is the
    low-pass remainder (as the paper's 16 px level). Each level halves H and W (an odd
    side rounds up)."""
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=images.device) / 16
    kernel = (kernel[:, None] * kernel[None, :]).expand(images.shape[1], 1, 5, 5)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])

    out, current = [], images
    for _ in range(levels - 1):
        down = blur(current)[..., ::2, ::2]
        # exactly twice the size, then cut: an odd side's grid stays the even one's, so a
        # band of an image's rows gets the image's own pyramid (`HoleSWD.add_image`)
        up = F.interpolate(down, scale_factor=2.0, mode="bilinear", align_corners=False)
        out.append(current - up[..., : current.shape[-2], : current.shape[-1]])
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
        width = level.shape[-1]
        patches.append(_gather(padded[i], pick // width, pick % width))
    if not patches:
        return level.new_zeros(0, level.shape[1], PATCH * PATCH)
    return torch.cat(patches)


def _gather(padded: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """The patches centred on (ys, xs) (N,) of a level, from `padded`, the level (C, h, w)
    reflected PATCH // 2 px at its edges, as (N, C, PATCH * PATCH) in unfold's order (one
    channel's rows after another). Only the patches are read: unfolding a photo's level
    whole would take C * PATCH**2 times its pixels."""
    offsets = torch.arange(PATCH, device=padded.device)
    rows = (ys.to(padded.device)[:, None] + offsets)[:, :, None]  # (N, PATCH, 1)
    cols = (xs.to(padded.device)[:, None] + offsets)[:, None, :]  # (N, 1, PATCH)
    patches = padded[:, rows, cols]  # (C, N, PATCH, PATCH)
    return patches.permute(1, 0, 2, 3).reshape(len(ys), padded.shape[0], PATCH * PATCH)


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

    def add_image(
        self,
        pred: np.ndarray,
        target: np.ndarray,
        hole: np.ndarray,
        channels: int | None = None,
        band_pixels: int = BAND_PIXELS,
    ) -> None:
        """`add` for one whole image of any size: pred (a repair) and target (its original)
        (H, W, C) uint8 or uint16, taken in [0, 1] of their range, and hole (H, W) bool;
        `channels`: the descriptors' channels, a greyscale image's repeated (the other
        images' channels, for a folder of both). The same patches as `add` of the image as
        a batch of one, but the pyramid is built a band of `band_pixels` (and MARGIN rows
        either side) at a time, and only for the bands that hold a drawn patch: memory
        grows with a band and the hole map, not with the image."""
        height, width = hole.shape
        top = float(np.iinfo(target.dtype).max)
        mask = torch.from_numpy(hole.astype(np.uint8))[None, None].to(torch.bfloat16)
        region = F.max_pool2d(mask, 2 * RING + 1, stride=1, padding=RING)  # 0/1: exact
        sizes = [(height, width)]
        for _ in range(LEVELS - 1):
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        picks = []
        for lvl, size in enumerate(sizes):
            here = F.adaptive_max_pool2d(region, size)[0, 0] > 0
            where = torch.nonzero(here.flatten(), as_tuple=True)[0]
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.images * LEVELS + lvl)
            pick = where[torch.randperm(len(where), generator=g)[: self.per_image]]
            picks.append((pick // size[1], pick % size[1]))
        del mask, region
        found = [
            [torch.zeros(len(ys), target.shape[2], PATCH * PATCH) for ys, _ in picks]
            for _ in range(2)
        ]
        step = 2 ** (LEVELS - 1)  # band edges on every level's grid
        rows = max(step, band_pixels // width // step * step)
        for a in range(0, height, rows):
            b = min(a + rows, height)
            inside = [
                ((ys >= a // 2**lvl) & (ys < -(-b // 2**lvl))).nonzero(as_tuple=True)[0]
                for lvl, (ys, _) in enumerate(picks)
            ]
            if not any(len(i) for i in inside):
                continue
            lo, hi = max(0, a - MARGIN), min(height, b + MARGIN)
            for side, image in zip(found, (pred, target), strict=True):
                band = image[lo:hi].transpose(2, 0, 1).astype(np.float32) / np.float32(top)
                levels = laplacian_pyramid(torch.from_numpy(band)[None])
                for lvl, (level, (ys, xs), index) in enumerate(
                    zip(levels, picks, inside, strict=True)
                ):
                    if len(index):
                        pad = PATCH // 2
                        padded = F.pad(level, (pad, pad, pad, pad), mode="reflect")[0]
                        local = ys[index] - lo // 2**lvl
                        side[lvl][index] = _gather(padded, local, xs[index])
        for lvl in range(LEVELS):
            for side, patches in zip((self.fake, self.real), found, strict=True):
                wanted = (-1, channels or target.shape[2], -1)
                side[lvl].append(patches[lvl].expand(*wanted).contiguous())
        self.images += 1

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
