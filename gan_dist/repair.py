"""Repairing images of any size with a trained model: tiles and blending (files in and out:
`repair_files`).

Whole-image inference runs out of memory on real scans and photos, so the image is cut into
overlapping tiles, run in batches, and blended with weights that ramp down towards each tile's
edge (no seams: every output pixel is a weighted mean of the tiles covering it, dominated by
the tile whose centre is nearest). Tiles are processed one row of tiles at a time into a band
buffer as wide as the image and one tile high, so peak memory grows with the image only
through the 8- or 16-bit input and output arrays, never through float copies of the image.

Known pixels of an inpainting model are copied from the input unchanged (bit-exact, also at
16 bits); only the hole pixels come from the net.

A model that corrects a classical prefill gets the prefill of each hole solved once, on the
hole's own bounding box plus a margin of known pixels, not per tile: a tile whose edge cuts
through a hole larger than itself sees no known pixels on that side, so two neighbouring tiles
would extrapolate different fills into their overlap and the blend would show where the tiles
met (a faint cross inside large holes). Memory for this grows with the holes' bounding boxes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from gan_dist.data.images import (
    from_float,
    to_channels,
)
from gan_dist.errors import GanDistError
from gan_dist.models import RepairModel


def repair_array(
    model: RepairModel,
    pixels: np.ndarray,
    mask: np.ndarray | None,
    tile: int = 256,
    overlap: int = 32,
    batch: int = 4,
) -> np.ndarray:
    """pixels (H, W, C) uint8/uint16, mask (H, W) bool or None -> repaired, same shape and
    dtype. Without a mask an inpainting model has nothing to do; a global-restoration model
    (denoise, deblur) restores every pixel."""
    if pixels.ndim == 2:
        return repair_array(model, pixels[:, :, None], mask, tile, overlap, batch)[:, :, 0]
    composite = bool(model.spec["model"]["composite"])
    height, width, channels = pixels.shape
    if mask is not None and mask.shape != (height, width):
        raise GanDistError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}")
    if composite and (mask is None or not mask.any()):
        return pixels.copy()
    if channels != model.channels and not (channels == 1 and model.channels == 3):
        raise GanDistError(
            f"the model repairs {model.channels}-channel images, this one has {channels}"
            + ("; convert it to greyscale first" if model.channels == 1 else "")
        )
    if mask is None:
        mask = np.zeros((height, width), dtype=bool)
    divisor = model.size_divisor
    tile = max(divisor, tile // divisor * divisor)
    overlap = min(overlap, tile // 2)
    th, tw = min(tile, _round_up(height, divisor)), min(tile, _round_up(width, divisor))
    out = pixels.copy()
    precision = model.precision_for(pixels.dtype)
    prefill = model.spec["model"].get("prefill", "none")
    fills = _hole_fills(pixels, mask, prefill, model.channels) if prefill != "none" else []
    band = _Band(width, th, model.channels)
    window = _window(th, tw, overlap)
    rows = _starts(height, th, th - overlap)
    for i, y in enumerate(rows):
        band.move_to(y)
        xs = _starts(width, tw, tw - overlap)
        for chunk in _chunks(xs, batch):
            images, masks = zip(
                *(_tile(pixels, mask, y, x, th, tw, model.channels) for x in chunk), strict=True
            )
            starts = [_start(im, y, x, fills) for im, x in zip(images, chunk, strict=True)]
            pred = model.forward(
                torch.from_numpy(np.stack(images)),
                torch.from_numpy(np.stack(masks)),
                precision,
                torch.from_numpy(np.stack(starts)) if fills else None,
            )
            pred = pred.cpu().numpy().transpose(0, 2, 3, 1)
            for x, p in zip(chunk, pred, strict=True):
                band.add(p, x, window)
        done_until = rows[i + 1] if i + 1 < len(rows) else height
        _finish(out, band.take(y, done_until), mask, y, composite)
    return out


@dataclass
class _Band:
    """Weighted sums for the image rows [top, top + height) over the full width."""

    width: int
    height: int
    channels: int
    top: int = 0
    sums: np.ndarray = field(init=False)
    weights: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.sums = np.zeros((self.height, self.width, self.channels), np.float32)
        self.weights = np.zeros((self.height, self.width, 1), np.float32)

    def move_to(self, top: int) -> None:
        """Shift the band down, keeping the rows the new position still covers."""
        shift = top - self.top
        if shift:
            keep = max(self.height - shift, 0)
            self.sums[:keep], self.weights[:keep] = self.sums[shift:], self.weights[shift:]
            self.sums[keep:], self.weights[keep:] = 0, 0
            self.top = top

    def add(self, pred: np.ndarray, x: int, window: np.ndarray) -> None:
        h, w = min(self.height, pred.shape[0]), min(self.width - x, pred.shape[1])
        self.sums[:h, x : x + w] += pred[:h, :w] * window[:h, :w]
        self.weights[:h, x : x + w] += window[:h, :w]

    def take(self, top: int, bottom: int) -> np.ndarray:
        n = bottom - top
        return self.sums[:n] / np.maximum(self.weights[:n], 1e-8)


def _finish(out: np.ndarray, rows: np.ndarray, mask: np.ndarray, top: int, composite: bool):
    """Blended rows in [-1, 1] -> the output's dtype and channels; holes only if compositing."""
    n = min(len(rows), out.shape[0] - top)
    values = from_float((rows[:n] + 1) / 2, out.dtype)
    values = to_channels(values, out.shape[2])
    if composite:
        hole = mask[top : top + n]
        out[top : top + n][hole] = values[hole]
    else:
        out[top : top + n] = values


def _tile(pixels, mask, y, x, th, tw, channels) -> tuple[np.ndarray, np.ndarray]:
    """One tile as the net's input: (C, th, tw) in [-1, 1] with holes black, as in
    training; tiles of an image smaller than the tile are padded by edge replication."""
    img = pixels[y : y + th, x : x + tw]
    hole = mask[y : y + th, x : x + tw]
    pad = ((0, th - img.shape[0]), (0, tw - img.shape[1]))
    if pad[0][1] or pad[1][1]:
        img = np.pad(img, (*pad, (0, 0)), mode="edge")
        hole = np.pad(hole, pad, mode="edge")
    top = float(np.iinfo(img.dtype).max)
    value = to_channels(img, channels).astype(np.float32) * (2 / top) - 1
    value[hole] = -1.0
    return value.transpose(2, 0, 1).copy(), hole[None].astype(np.float32)


HOLE_MARGIN = 16  # px of known context around each hole's bounding box for its prefill


def _hole_fills(
    pixels: np.ndarray, mask: np.ndarray, kind: str, channels: int
) -> list[tuple[int, int, np.ndarray]]:
    """(top, left, filled (C, h, w) in [-1, 1]) for every group of holes closer than twice
    HOLE_MARGIN, each solved once on its bounding box plus HOLE_MARGIN px (clipped to the
    image); see the module docstring."""
    from scipy import ndimage

    from gan_dist.nets.prefill import fill_holes

    grown = ndimage.binary_dilation(mask, iterations=HOLE_MARGIN)
    fills = []
    for box in ndimage.find_objects(ndimage.label(grown)[0]):
        (top, bottom), (left, right) = ((s.start, s.stop) for s in box)
        value, hole = _tile(pixels, mask, top, left, bottom - top, right - left, channels)
        filled = fill_holes(torch.from_numpy(value)[None], 1 - torch.from_numpy(hole)[None], kind)
        fills.append((top, left, filled[0].clamp(-1, 1).numpy()))
    return fills


def _start(tile: np.ndarray, y: int, x: int, fills: list) -> np.ndarray:
    """The tile (C, th, tw) with its holes' prefill pasted from `fills` (known pixels, and
    the edge padding of a tile larger than the image, are the same in both)."""
    if not fills:
        return tile
    start = tile.copy()
    th, tw = tile.shape[1:]
    for top, left, filled in fills:
        y0, y1 = max(y, top), min(y + th, top + filled.shape[1])
        x0, x1 = max(x, left), min(x + tw, left + filled.shape[2])
        if y0 < y1 and x0 < x1:
            start[:, y0 - y : y1 - y, x0 - x : x1 - x] = filled[
                :, y0 - top : y1 - top, x0 - left : x1 - left
            ]
    return start


def _window(th: int, tw: int, overlap: int) -> np.ndarray:
    """Linear ramps over `overlap` pixels at every edge; never zero, so border pixels that
    only one tile covers keep their value after normalisation."""

    def ramp(n: int) -> np.ndarray:
        r = np.minimum(1.0, (np.arange(n) + 0.5) / max(overlap, 1))
        return np.minimum(r, r[::-1])

    return (ramp(th)[:, None] * ramp(tw)[None, :])[:, :, None].astype(np.float32)


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, max(stride, 1)))
    return [*starts, length - size]


def _chunks(items: list[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


__all__ = ["repair_array"]
