"""Repairing images of any size with a trained model: tiles and blending (files in and out:
`files.repair_files`).

Whole-image inference runs out of memory on real scans and photos, so the image is cut into
overlapping tiles, run in batches, and blended with weights that ramp down towards each tile's
edge (no seams: every output pixel is a weighted mean of the tiles covering it, dominated by
the tile whose centre is nearest). Tiles are processed one row of tiles at a time into a band
buffer as wide as the image and one tile high, and finished rows are handed on (`repair_rows`)
as soon as no later tile covers them. The image and mask are read through slices only, so
with an image and mask read in bands (`data.tiff_stream`) peak memory does not grow with the
image at all; with numpy arrays it grows only through them, never through float copies.

Known pixels of an inpainting model are copied from the input unchanged (bit-exact, also at
16 bits); only the hole pixels come from the net, and tiles without a hole are not run.

A model that corrects a classical prefill gets the prefill of each group of holes solved
once, on the group's bounding box plus a margin of known pixels, not per tile: a tile whose
edge cuts through a hole larger than itself sees no known pixels on that side, so two
neighbouring tiles would extrapolate different fills into their overlap and the blend would
show where the tiles met (a faint cross inside large holes). Memory for this grows with the
bounding boxes of the holes one band of tiles crosses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from gan_dist.core.errors import GanDistError
from gan_dist.core.pixels import to_signed, to_unit
from gan_dist.core.prefill import prefill_parts
from gan_dist.data.images import from_float, to_channels
from gan_dist.repair.model_file import RepairModel

T = TypeVar("T")


class Raster(Protocol):
    """What repair reads an image or mask through: a numpy array, or anything with a shape
    and dtype that returns numpy arrays for [rows, columns] slices (a TIFF read in bands)."""

    shape: tuple[int, ...]
    dtype: Any

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray: ...


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
    (denoise, deblur) restores every pixel. Raises GanDistError for a mask of another size
    or an image whose channels the model cannot take."""
    if pixels.ndim == 2:
        return repair_array(model, pixels[:, :, None], mask, tile, overlap, batch)[:, :, 0]
    out = np.empty_like(pixels)
    for top, rows in repair_rows(model, pixels, mask, tile, overlap, batch):
        out[top : top + len(rows)] = rows
    return out


def repair_rows(
    model: RepairModel,
    pixels: Raster,
    mask: Raster | None,
    tile: int = 256,
    overlap: int = 32,
    batch: int = 4,
) -> Iterator[tuple[int, np.ndarray]]:
    """`repair_array` one band of finished rows at a time, top to bottom: yields (top, rows
    (n, W, C) in pixels' dtype) covering every row once, in order.

    pixels (H, W, C) and mask (H, W) may be anything sliced like numpy arrays by
    [rows, columns] (a TIFF read in bands, `gan_dist.data.tiff_stream`): only the rows of one
    band of tiles, and the bounding boxes of the holes it crosses, are read at a time, so
    memory does not grow with the image. Tiles without a hole pixel are not run through an
    inpainting model (their output would be discarded)."""
    composite = bool(model.spec["model"]["composite"])
    height, width, channels = pixels.shape
    if mask is not None and tuple(mask.shape) != (height, width):
        raise GanDistError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}")
    boxes = _hole_boxes(mask, height, width) if mask is not None else []
    if composite and not boxes:  # nothing to repair: the image as it is
        for top in range(0, height, _READ_ROWS):
            yield top, np.asarray(pixels[top : top + _READ_ROWS, :])
        return
    if channels != model.channels and not (channels == 1 and model.channels == 3):
        raise GanDistError(
            f"the model repairs {model.channels}-channel images, this one has {channels}"
            + ("; convert it to greyscale first" if model.channels == 1 else "")
        )
    if mask is None:  # a view of one False: no memory whatever the size
        mask = np.broadcast_to(np.False_, (height, width))
    th, tw, overlap = tile_shape(model, height, width, tile, overlap)
    precision = model.precision_for(pixels.dtype)
    prefill = model.spec["model"].get("prefill", "none")
    fills = _Prefills(pixels, mask, boxes if prefill != "none" else [], prefill, model.channels)
    band = _Band(width, th, model.channels)
    window = _window(th, tw, overlap)
    rows = _starts(height, th, th - overlap)
    for i, y in enumerate(rows):
        band.move_to(y)
        done_until = rows[i + 1] if i + 1 < len(rows) else height
        active = fills.crossing(y, y + th)
        tiles = _band_tiles(pixels, mask, y, th, tw, overlap, model.channels, composite)
        for chunk in _chunks(tiles, batch):
            xs, images, masks = zip(*chunk, strict=True)
            starts = [
                _start(im, y, x, active, fills.parts) for im, x in zip(images, xs, strict=True)
            ]
            pred = model.forward(
                torch.from_numpy(np.stack(images)),
                torch.from_numpy(np.stack(masks)),
                precision,
                torch.from_numpy(np.stack(starts)) if fills.kind != "none" else None,
                torch.tensor([(y, x) for x in xs]),
            )
            pred = pred.cpu().numpy().transpose(0, 2, 3, 1)
            for x, p in zip(xs, pred, strict=True):
                band.add(p, x, window)
        yield y, _finish(pixels, mask, band.take(y, done_until), y, composite)


def band_work(
    model: RepairModel,
    height: int,
    width: int,
    mask: Raster | None,
    tile: int = 256,
    overlap: int = 32,
) -> list[tuple[int, int]]:
    """What `repair_rows` will run through the net for an image of height x width px, band
    by band, before any of it is computed: (the band's first row, its tiles' pixels) top to
    bottom, counting for an inpainting model only the tiles that hold a hole pixel (mask
    (H, W) bool, read one band at a time; None: no hole, so no band)."""
    composite = bool(model.spec["model"]["composite"])
    if composite and mask is None:
        return []
    th, tw, overlap = tile_shape(model, height, width, tile, overlap)
    lefts = np.array(_starts(width, tw, tw - overlap))
    bands = []
    for y in _starts(height, th, th - overlap):
        tiles = len(lefts)
        if composite:
            columns = np.asarray(mask[y : y + th, :]).any(axis=0)
            before = np.concatenate([[0], np.cumsum(columns)])  # hole columns left of each x
            tiles = int(np.count_nonzero(before[np.minimum(lefts + tw, width)] > before[lefts]))
        bands.append((y, tiles * th * tw))
    return bands


def tile_shape(
    model: RepairModel, height: int, width: int, tile: int = 256, overlap: int = 32
) -> tuple[int, int, int]:
    """(tile height, tile width, overlap) px as `repair_rows` cuts this image: tiles a
    multiple of the net's size divisor, no larger than the image needs."""
    divisor = model.size_divisor
    tile = max(divisor, tile // divisor * divisor)
    overlap = min(overlap, tile // 2)
    return min(tile, _round_up(height, divisor)), min(tile, _round_up(width, divisor)), overlap


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


def _finish(pixels: Raster, mask: Raster | None, rows: np.ndarray, top: int, composite: bool):
    """Blended rows in [-1, 1] -> output rows in the pixels' dtype and channels; for an
    inpainting model, the input's rows with only their hole pixels replaced."""
    n = min(len(rows), pixels.shape[0] - top)
    values = from_float(to_unit(rows[:n]), pixels.dtype)
    values = to_channels(values, pixels.shape[2])
    if not composite:
        return values
    out = np.array(pixels[top : top + n, :])
    hole = np.asarray(mask[top : top + n, :])
    out[hole] = values[hole]
    return out


def _band_tiles(
    pixels: Raster,
    mask: Raster | None,
    y: int,
    th: int,
    tw: int,
    overlap: int,
    channels: int,
    composite: bool,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(x, image, hole) for the tiles of the band of rows starting at y; for an inpainting
    model only the tiles that hold a hole pixel."""
    for x in _starts(pixels.shape[1], tw, tw - overlap):
        if composite and not np.asarray(mask[y : y + th, x : x + tw]).any():
            continue
        yield x, *_tile(pixels, mask, y, x, th, tw, channels)


def _tile(pixels, mask, y, x, th, tw, channels) -> tuple[np.ndarray, np.ndarray]:
    """One tile as the net's input: (C, th, tw) in [-1, 1] with holes black, as in
    training; tiles of an image smaller than the tile are padded by edge replication."""
    img = np.asarray(pixels[y : y + th, x : x + tw])
    hole = np.asarray(mask[y : y + th, x : x + tw])
    pad = ((0, th - img.shape[0]), (0, tw - img.shape[1]))
    if pad[0][1] or pad[1][1]:
        img = np.pad(img, (*pad, (0, 0)), mode="edge")
        hole = np.pad(hole, pad, mode="edge")
    value = to_signed(to_channels(img, channels))
    value[hole] = -1.0
    return value.transpose(2, 0, 1).copy(), hole[None].astype(np.float32)


HOLE_MARGIN = 16  # px: holes are grouped on a grid of cells this size (see _hole_boxes)
# px of image around a group's box that an exemplar fill (model.prefill: patchmatch) may
# copy from: a training crop's worth (128 px) for a hole at its centre
EXEMPLAR_CONTEXT = 48
_READ_ROWS = 256  # rows of the mask (a multiple of HOLE_MARGIN) or image read at once


def _hole_boxes(mask: Raster, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) px of every group of holes, each with at least
    HOLE_MARGIN px of known context on every side (clipped to the image), sorted by top.

    Found on a grid of HOLE_MARGIN px cells (a cell is marked when it holds a hole pixel,
    then grown by one cell), read in bands of rows, so that a mask of any size costs
    1/HOLE_MARGIN^2 of its pixels in memory; holes within about two cells of each other
    share a box."""
    from scipy import ndimage

    m = HOLE_MARGIN
    cells = np.zeros((_round_up(height, m) // m, _round_up(width, m) // m), bool)
    for top in range(0, height, _READ_ROWS):
        rows = np.asarray(mask[top : top + _READ_ROWS, :])
        h = rows.shape[0]
        padded = np.zeros((_round_up(h, m), cells.shape[1] * m), bool)
        padded[:h, :width] = rows
        cells[top // m : (top + h + m - 1) // m] = padded.reshape(-1, m, cells.shape[1], m).any(
            axis=(1, 3)
        )
    square = np.ones((3, 3), bool)
    labels, _ = ndimage.label(ndimage.binary_dilation(cells, square), square)
    boxes = [
        (ys.start * m, min(ys.stop * m, height), xs.start * m, min(xs.stop * m, width))
        for ys, xs in ndimage.find_objects(labels)
    ]
    return sorted(boxes)


class _Prefills:
    """The prefill of every group of holes, each solved once on its whole box (see the
    module docstring), computed when the first band of tiles reaches it and dropped once
    the bands have passed it, so memory grows with the holes of one band, not the image."""

    def __init__(self, pixels, mask, boxes: list, kind: str, channels: int) -> None:
        self.pixels, self.mask, self.kind, self.channels = pixels, mask, kind, channels
        self.waiting = list(reversed(boxes))  # popped from the end: top-most first
        self.active: list[tuple[int, int, np.ndarray]] = []
        self.kind = kind if boxes else "none"
        self.parts = len(prefill_parts(kind))  # fills stacked in each start

    def crossing(self, top: int, bottom: int) -> list[tuple[int, int, np.ndarray]]:
        """(top, left, filled (C, h, w) in [-1, 1]) of the boxes that rows [top, bottom)
        cross; calls must come with non-decreasing `top`."""
        from gan_dist.core.prefill import fill_holes

        self.active = [f for f in self.active if f[0] + f[2].shape[1] > top]
        while self.waiting and self.waiting[-1][0] < bottom:
            y0, y1, x0, x1 = self.waiting.pop()
            # an exemplar fill copies patches from around the hole: solved on a wider box
            # (still one solve per group of holes), kept on the group's own box
            c = EXEMPLAR_CONTEXT if "patchmatch" in prefill_parts(self.kind) else 0
            top_c, left_c = max(y0 - c, 0), max(x0 - c, 0)
            bottom_c, right_c = min(y1 + c, self.mask.shape[0]), min(x1 + c, self.mask.shape[1])
            value, hole = _tile(
                self.pixels, self.mask, top_c, left_c, bottom_c - top_c, right_c - left_c,
                self.channels,
            )  # fmt: skip
            known = 1 - torch.from_numpy(hole)[None]
            filled = fill_holes(torch.from_numpy(value)[None], known, self.kind)[0]
            filled = filled[:, y0 - top_c : y1 - top_c, x0 - left_c : x1 - left_c]
            self.active.append((y0, x0, filled.clamp(-1, 1).numpy()))
        return self.active


def _start(tile: np.ndarray, y: int, x: int, fills: list, parts: int = 1) -> np.ndarray:
    """The tile (C, th, tw) with its holes' prefill pasted from `fills` (known pixels, and
    the edge padding of a tile larger than the image, are the same in both); (parts * C,
    th, tw) for a prefill that stacks `parts` fills."""
    if not fills and parts == 1:
        return tile
    start = np.concatenate([tile] * parts) if parts > 1 else tile.copy()
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


def _chunks(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


__all__ = ["Raster", "band_work", "repair_array", "repair_rows", "tile_shape"]
