"""Repairing images of any size with a trained model: tiles, blending, files in and out.

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

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gan_dist.data.images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    from_float,
    read_image,
    to_bit_depth,
    to_channels,
    write_bytes_atomic,
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


# --- files ---------------------------------------------------------------------------------


@dataclass
class FileResult:
    source: Path
    output: Path | None
    status: str  # "repaired" | "unchanged" | "failed" | "skipped"
    detail: str = ""
    seconds: float = 0.0
    size: str = ""


def plan(
    input_path: Path, output: Path, masks: Path | None
) -> list[tuple[Path, Path, Path | None]]:
    """(image, output file, mask or None) for every image, refusing any plan that could
    overwrite an input."""
    input_path, output = input_path.resolve(), output.resolve()
    if not input_path.exists():
        raise GanDistError(f"{input_path}: no such file or folder")
    if output == input_path:
        raise GanDistError("OUTPUT is INPUT: repaired images never overwrite the originals")
    if input_path.is_dir():
        if output.is_relative_to(input_path):
            raise GanDistError(f"OUTPUT {output} lies inside INPUT {input_path}; choose another")
        images = sorted(p for p in input_path.rglob("*") if p.is_file() and _is_image(p))
        pairs = [(p, output / _output_name(p.relative_to(input_path))) for p in images]
    else:
        target = output / _output_name(Path(input_path.name)) if output.is_dir() else output
        pairs = [(input_path, target)]
    planned = []
    for image, target in pairs:
        rel = image.relative_to(input_path) if input_path.is_dir() else Path(image.name)
        planned.append((image, target, _mask_for(masks, rel) if masks else None))
    return planned


def repair_files(
    load: Callable[[], RepairModel],
    planned: list[tuple[Path, Path, Path | None]],
    tile: int,
    overlap: int,
    batch: int,
    overwrite: bool,
    on_done: Callable[[FileResult], None] = lambda r: None,
) -> list[FileResult]:
    """Repair every planned file; a file that fails is reported and skipped, never fatal.

    The model is loaded at the first file that needs it, so re-running an interrupted job
    over a folder that is already done neither downloads nor loads anything. A model that
    cannot be loaded is fatal (GanDistError): every file would fail the same way."""
    model: RepairModel | None = None
    results = []
    for image, target, mask_path in planned:
        if target.exists() and not overwrite:
            result = FileResult(
                image, None, "skipped", f"{target} exists (use --overwrite to replace it)"
            )
        else:
            model = model or load()
            start = time.perf_counter()  # the file's own time, not the model's loading
            try:
                result = _repair_one(model, image, target, mask_path, tile, overlap, batch)
            except (GanDistError, OSError, ValueError) as exc:
                result = FileResult(image, None, "failed", str(exc))
            result.seconds = time.perf_counter() - start
        results.append(result)
        on_done(result)
    return results


def _repair_one(model, image, target, mask_path, tile, overlap, batch) -> FileResult:
    picture = read_image(image)
    pixels = picture.pixels
    mask = None
    composite = bool(model.spec["model"]["composite"])
    if mask_path is not None:
        mask_pixels = read_image(mask_path).pixels
        if mask_pixels.shape[:2] != pixels.shape[:2]:
            raise GanDistError(
                f"mask {mask_path} is {mask_pixels.shape[1]}x{mask_pixels.shape[0]}, "
                f"the image {pixels.shape[1]}x{pixels.shape[0]}"
            )
        top = np.iinfo(mask_pixels.dtype).max
        mask = to_channels(mask_pixels, 1)[:, :, 0] > top // 2
    elif composite:
        raise GanDistError("no mask found (an inpainting model needs one: --mask FILE|DIR)")
    repaired = repair_array(model, pixels, mask, tile, overlap, batch)
    suffix = target.suffix.lower()
    notes = [n for n in picture.notes if n != "alpha channel dropped"]
    if picture.alpha is not None:
        if suffix in (".png", ".tif", ".tiff") or (suffix == ".webp" and repaired.shape[2] == 3):
            alpha = to_bit_depth(picture.alpha, repaired.dtype.itemsize * 8)
            repaired = np.concatenate([repaired, alpha[:, :, None]], axis=2)
        else:
            notes.append(f"alpha channel dropped ({suffix} output)")
    write_bytes_atomic(target, encode_image(repaired, suffix))
    notes = "; ".join(notes)
    holes = f"{mask.mean():.1%} of pixels" if mask is not None else "all pixels"
    size = f"{pixels.shape[1]}x{pixels.shape[0]} {pixels.dtype.itemsize * 8}-bit"
    return FileResult(image, target, "repaired", holes + (f"; {notes}" if notes else ""), 0, size)


def encode_image(arr: np.ndarray, suffix: str) -> bytes:
    """Bytes of the format the suffix names, at the array's depth (16-bit stays 16-bit);
    a 2nd or 4th channel is alpha."""
    import io

    from PIL import Image

    from gan_dist.data.images import encode_png

    if suffix == ".png":
        return encode_png(arr)  # 1-4 channels at 8 or 16 bits
    if suffix in (".tif", ".tiff"):
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, arr[:, :, 0] if arr.shape[2] == 1 else arr, compression="zlib")
        return buf.getvalue()
    if arr.dtype != np.uint8:
        raise GanDistError(f"{suffix} cannot hold 16-bit pixels; write .png or .tif")
    buf = io.BytesIO()
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}[suffix]
    im.save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _output_name(rel: Path) -> Path:
    """Same relative path and format; DICOM becomes 16-bit PNG (we do not write DICOM)."""
    return rel.with_suffix(".png") if rel.suffix.lower() in (".dcm", ".dicom") else rel


def _mask_for(masks: Path, rel: Path) -> Path | None:
    """A mask file, or the mask with the image's relative path (any image extension)."""
    if masks.is_file():
        return masks
    for candidate in [masks / rel, *sorted((masks / rel.parent).glob(rel.stem + ".*"))]:
        if candidate.is_file() and _is_image(candidate):
            return candidate
    return None


__all__ = ["FileResult", "ImageReadError", "plan", "repair_array", "repair_files"]
