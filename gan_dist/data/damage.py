"""Synthetic damage: what turns a clean image into a training pair.

Every sample's damage is a pure function of (seed, sample key), so re-packing the same
folder gives byte-identical shards and a damaged sample can be reproduced from its key alone.
Work is done in float [0, 1] and quantised back to the source bit depth, so 16-bit images
get 16-bit noise, not 8-bit steps.

The mask marks pixels whose content is gone (255 = missing, for inpainting). Global
degradations (noise, blur, JPEG, downscaling) touch every pixel but remove none, so they leave
the mask at 0; a recipe turns off compositing for them.
"""

from __future__ import annotations

import hashlib
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from gan_dist.data.images import from_float, resize, to_float

if TYPE_CHECKING:
    from gan_dist.config.recipe import DamageStep, MaskDamage


def sample_rng(seed: int, key: str) -> np.random.Generator:
    """Independent of Python's salted hash(): the same (seed, key) gives the same stream
    in every process and on every machine."""
    raw = key.encode("utf-8", "surrogateescape")  # a file name need not be UTF-8
    digest = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest]))


def apply_damage(
    clean: np.ndarray, steps: list[DamageStep], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """(damaged, mask HxW uint8, the parameters drawn for each applied step)."""
    height, width = clean.shape[:2]
    img = to_float(clean)
    mask = np.zeros((height, width), dtype=np.uint8)
    applied: list[dict[str, Any]] = []
    for step in steps:
        if rng.random() >= step.p:
            continue
        img, params = _APPLY[step.type](img, step, rng, mask)
        applied.append({"type": step.type, **params})
    return from_float(img, clean.dtype), mask, applied


def damage_image(
    clean: np.ndarray, steps: list[DamageStep], rng: np.random.Generator, cell: int
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """`apply_damage` for a whole image of any size, as `gan-dist eval` damages a folder of
    clean images: (damaged, holes (H, W) bool, the parameters drawn for each applied step).

    Global steps (noise, blur, JPEG, downscaling) are applied to the whole image, once:
    their parameters are per pixel or in pixels, so they mean the same at any size. A mask
    step is drawn on a grid of `cell` x `cell` px squares (the training crop size), each
    square drawn exactly as `apply_damage` draws a training crop's mask (its own `p`,
    coverage and shape) and cut at the image's edge; an image smaller than a cell on a
    side gets cells of its own side. Strokes and boxes are sized relative to the square
    they are drawn in, so drawn at the photo's full size they would be as large in pixels
    as the photo is (a 5312 px photo's strokes 160-530 px wide, boxes up to half of it):
    holes no model trained on crops has seen. Drawn per cell, they keep the pixel sizes,
    and the coverage, of training.

    The holes are not filled in `damaged`: repair blanks them itself. Without a global step
    `damaged` is `clean` itself; with one, it works on a float copy of the image."""
    from gan_dist.config.recipe import MaskDamage

    height, width = clean.shape[:2]
    holes = np.zeros((height, width), dtype=bool)
    img = None
    applied: list[dict[str, Any]] = []
    for step in steps:
        if isinstance(step, MaskDamage):
            drawn = _mask_cells(holes, step, rng, min(cell, height), min(cell, width))
            applied.append({"type": step.type, "cells": drawn})
            continue
        if rng.random() >= step.p:
            continue
        img = to_float(clean) if img is None else img
        img, params = _APPLY[step.type](img, step, rng, np.zeros((0, 0), np.uint8))
        applied.append({"type": step.type, **params})
    damaged = clean if img is None else from_float(img, clean.dtype)
    return damaged, holes, applied


def _mask_cells(
    holes: np.ndarray, step: MaskDamage, rng: np.random.Generator, cell_h: int, cell_w: int
) -> int:
    """Draws `step` into `holes` cell by cell, rows first; returns how many cells got one."""
    height, width = holes.shape
    drawn = 0
    for top in range(0, height, cell_h):
        for left in range(0, width, cell_w):
            if rng.random() >= step.p:
                continue
            square = np.zeros((cell_h, cell_w), dtype=np.uint8)
            _mask(np.zeros((cell_h, cell_w, 1), np.float32), step, rng, square)
            part = holes[top : top + cell_h, left : left + cell_w]
            part |= square[: part.shape[0], : part.shape[1]] > 0
            drawn += 1
    return drawn


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


# --- masks ---------------------------------------------------------------------------------


def _mask(img, step: MaskDamage, rng, mask):
    target = _uniform(rng, step.coverage)
    shape = step.shape if step.shape != "mixed" else ("strokes", "boxes")[int(rng.integers(2))]
    drawn = draw_mask(mask.shape[1], mask.shape[0], shape, target, rng)
    mask |= drawn
    hole = mask > 0
    img = img.copy()
    img[hole] = step.fill
    return img, {
        "shape": shape,
        "target_coverage": round(target, 4),
        "coverage": round(float(hole.mean()), 4),
    }


def draw_mask(
    width: int, height: int, shape: str, coverage: float, rng: np.random.Generator
) -> np.ndarray:
    """Add strokes or boxes until `coverage` of the image is covered.

    A shape that would overshoot the target by more than a few percent is redrawn smaller,
    so the coverage a recipe asks for is the coverage it gets.
    """
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    total = width * height
    scale = min(width, height)
    covered = 0.0
    attempts = 0
    shrink = 1.0
    while covered < coverage and attempts < 200:
        attempts += 1
        trial = canvas.copy()
        draw = ImageDraw.Draw(trial)
        if shape == "strokes":
            _stroke(draw, width, height, scale * shrink, rng)
        else:
            _box(draw, width, height, shrink, rng)
        trial_cover = np.count_nonzero(np.asarray(trial)) / total
        if trial_cover > coverage + 0.05 and trial_cover > covered:
            shrink *= 0.7
            continue
        canvas, covered = trial, trial_cover
    return np.where(np.asarray(canvas) > 0, 255, 0).astype(np.uint8)


def _stroke(draw, width: int, height: int, scale: float, rng: np.random.Generator) -> None:
    """A free-form brush stroke (DeepFill v2 / LaMa irregular masks): a random walk of line
    segments of one width, joints rounded so the stroke has no gaps."""
    brush = max(2, int(rng.uniform(0.03, 0.10) * scale))
    x, y = float(rng.uniform(0, width)), float(rng.uniform(0, height))
    angle = float(rng.uniform(0, 2 * math.pi))
    for _ in range(int(rng.integers(4, 12))):
        angle += float(rng.uniform(-math.pi / 2, math.pi / 2))
        length = float(rng.uniform(0.05, 0.25)) * scale
        nx = min(max(x + length * math.cos(angle), 0), width - 1)
        ny = min(max(y + length * math.sin(angle), 0), height - 1)
        draw.line([(x, y), (nx, ny)], fill=255, width=brush)
        r = brush / 2
        draw.ellipse([nx - r, ny - r, nx + r, ny + r], fill=255)
        x, y = nx, ny


def _box(draw, width: int, height: int, shrink: float, rng: np.random.Generator) -> None:
    bw = max(2, int(rng.uniform(0.1, 0.5) * width * shrink))
    bh = max(2, int(rng.uniform(0.1, 0.5) * height * shrink))
    x0 = int(rng.integers(0, max(1, width - bw + 1)))
    y0 = int(rng.integers(0, max(1, height - bh + 1)))
    draw.rectangle([x0, y0, x0 + bw - 1, y0 + bh - 1], fill=255)


# --- global degradations -------------------------------------------------------------------


def _gaussian_noise(img, step, rng, mask):
    sigma = _uniform(rng, step.sigma)
    noisy = img + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0), {"sigma": round(sigma, 5)}


def _poisson_noise(img, step, rng, mask):
    peak = _uniform(rng, step.peak)
    noisy = rng.poisson(img.astype(np.float64) * peak) / peak
    return np.clip(noisy, 0.0, 1.0).astype(np.float32), {"peak": round(peak, 3)}


def _blur(img, step, rng, mask):
    from scipy.ndimage import gaussian_filter

    sigma = _uniform(rng, step.sigma)
    out = gaussian_filter(img, sigma=(sigma, sigma, 0), mode="reflect")
    return out.astype(np.float32), {"sigma": round(sigma, 4)}


def _jpeg(img, step, rng, mask):
    """JPEG is 8-bit: the artefacts are computed on an 8-bit copy and added to the float image
    as a residual, so 16-bit detail outside the artefacts survives."""
    from PIL import Image

    quality = int(rng.integers(step.quality[0], step.quality[1] + 1))
    eight = from_float(img, np.dtype(np.uint8))
    buf = io.BytesIO()
    Image.fromarray(eight[:, :, 0] if eight.shape[2] == 1 else eight).save(
        buf, format="JPEG", quality=quality
    )
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32)
    decoded = decoded.reshape(eight.shape)
    residual = (decoded - eight.astype(np.float32)) / 255.0
    return np.clip(img + residual, 0.0, 1.0), {"quality": quality}


def _downscale(img, step, rng, mask):
    factor = _uniform(rng, step.factor)
    height, width = img.shape[:2]
    small_w, small_h = max(1, round(width / factor)), max(1, round(height / factor))
    deep = from_float(img, np.dtype(np.uint16))
    restored = resize(resize(deep, small_w, small_h), width, height)
    return to_float(restored), {"factor": round(factor, 4)}


_APPLY = {
    "mask": _mask,
    "gaussian_noise": _gaussian_noise,
    "poisson_noise": _poisson_noise,
    "blur": _blur,
    "jpeg": _jpeg,
    "downscale": _downscale,
}
