"""`gan-dist eval` on a folder of clean images: each image scored whole, at its own size,
repaired exactly as `gan-dist repair` repairs it (LaMa's and MMagic's protocol).

- Holes. With `--mask`, each image's holes are its own mask, matched as repair matches
  masks (`files.find_images`, the one matcher) and read by repair's rule
  (`read_mask`: white is a hole). An image without a mask, or with two, is skipped with
  the reason repair gives; it is never scored another way. Without `--mask`, the holes are
  drawn from the model's own damage steps at the image's own size (`damage.damage_image`:
  strokes and boxes drawn on a grid of training-crop cells, so they keep the pixel sizes
  the model trained on), with EVAL_SEED and the file's relative path: a rerun, or another
  model with the same damage, is scored on the same holes.
- The damaged input is what repair would be given: the clean image, with a restoration
  model's global damage (noise, blur, JPEG) applied to the whole image at its own size
  first; repair blanks the holes itself.
- The repair is `repair.repair_array` with repair's tiles, overlap, batch and precision.
- The metrics are computed over the whole image at full resolution, a band of rows at a
  time (`image_metrics`, `HoleSWD.add_image`, `PerceptualMetrics.add_image`), in [0, 1] of
  the image's own range (16-bit stays 16-bit).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan_dist.core.errors import GanDistError
from gan_dist.data.images import DEFAULT_MAX_PIXELS
from gan_dist.repair.files import BATCH, OVERLAP, TILE, Found, find_images, missing_mask

if TYPE_CHECKING:
    import numpy as np

    from gan_dist.config.recipe import DamageStep
    from gan_dist.metrics.perceptual import PerceptualWeights
    from gan_dist.repair.model_file import RepairModel

EVAL_SEED = 12345  # with each file's relative path: the holes a folder is scored on
SHARD_BATCH = 16  # samples a pass on shards
MIN_SIDE = 32  # px: the smallest image scored (the nets' smallest input; SSIM's windows)
WHOLE = ("psnr", "ssim", "ms_ssim")
IN_HOLE = ("hole_psnr", "hole_ssim", "hole_l1")


def evaluate_data(
    model: RepairModel,
    data: Path,
    masks: Path | None = None,
    tile: int = TILE,
    overlap: int = OVERLAP,
    batch: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    weights: PerceptualWeights | None = None,
    on_image: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """`gan-dist eval`: packed shards (a folder with a manifest) scored as packed
    (`train.evaluate.evaluate_model`, `batch` samples a pass, SHARD_BATCH by default),
    anything else as clean images (`evaluate_folder`, `batch` tiles a pass, repair's BATCH
    by default). A model with a prefill is scored a second time without its generator, on
    the same images and holes: `prefill` holds that baseline's metrics (FID, KID and LPIPS
    left out) with its `kind`, so the report shows what the net adds. Raises GanDistError
    for `masks` with shards (they carry their own), and as those two do."""
    from gan_dist.data.pack import MANIFEST
    from gan_dist.metrics.evaluate import evaluate_model

    packed = (data / MANIFEST).is_file()
    if packed and masks is not None:
        raise GanDistError(
            f"--mask {masks}: {data} holds packed shards, which carry their own masks; give "
            "--mask with a folder of clean images"
        )

    def scored(what: RepairModel, perceptual: PerceptualWeights | None) -> dict[str, Any]:
        if packed:
            return evaluate_model(what, data, batch or SHARD_BATCH, perceptual)
        tiles = batch or BATCH
        return evaluate_folder(
            what, data, masks, tile, overlap, tiles, max_pixels, perceptual, on_image
        )

    metrics = scored(model, weights)
    baseline = model.prefill_only()
    if baseline is not None:
        alone = scored(baseline, None)
        keys = (*WHOLE, *IN_HOLE, "hole_swd")
        prefill = {k: alone[k] for k in keys if k in alone}
        metrics["prefill"] = {"kind": model.spec["model"]["prefill"], **prefill}
    return metrics


def evaluate_folder(
    model: RepairModel,
    data: Path,
    masks: Path | None = None,
    tile: int = TILE,
    overlap: int = OVERLAP,
    batch: int = BATCH,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    weights: PerceptualWeights | None = None,
    on_image: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Scores `model` on the clean images under `data` (a folder, searched recursively, or
    one image), at their own size, as the module docstring says; `batch`: tiles per pass.
    `on_image(done, total)` follows the images.

    Returns `evaluate`'s metric keys (samples: the images scored; psnr, ssim and ms_ssim the
    means over them; hole_psnr, hole_ssim and hole_l1 the means over the images with a hole;
    hole_swd; fid, kid and lpips with `weights`), and: `split` None; `scored`, what was
    scored (`path` folder, `scale` native, `images`, the `smallest` and `largest` sizes,
    `masks` (where the holes came from), `hole_coverage_pct` (the mean of the images'),
    `tile`, `overlap`, `precision`); `images`, one row per image scored (file, size, bit
    depth, mask, hole %, precision and its metrics, None where undefined); `skipped`, the
    images not scored ({file, reason}).

    Raises GanDistError when `data` or `masks` does not exist, holds no image, or none of
    its images could be scored (naming the first ones and why); WeightsError for a bad
    weights file, before any image is read."""
    from pydantic import TypeAdapter

    from gan_dist.config.recipe import DamageStep, MaskDamage
    from gan_dist.metrics.perceptual import PerceptualMetrics
    from gan_dist.metrics.swd import HoleSWD

    steps = TypeAdapter(list[DamageStep]).validate_python(model.spec["damage"])
    found = find_images(data, masks)
    if not found:
        raise GanDistError(f"{data}: no images found")
    if masks is not None:  # the user's holes stand in for the model's mask steps
        steps = [s for s in steps if not isinstance(s, MaskDamage)]
    device = next(model.net.parameters()).device
    perceptual = PerceptualMetrics(weights, device) if weights else None
    texture = HoleSWD()
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for done, item in enumerate(found, 1):
        name = item.rel.as_posix()
        try:
            row, clean, repaired, hole = _score_one(
                model, item, masks is not None, steps, tile, overlap, batch, max_pixels
            )
        except GanDistError as exc:
            skipped.append({"file": name, "reason": str(exc)})
        except MemoryError:
            skipped.append(
                {"file": name, "reason": "out of memory; try a smaller --tile or --batch"}
            )
        else:
            if hole is not None and hole.any():
                texture.add_image(repaired, clean, hole, model.channels)
            if perceptual is not None:
                perceptual.add_image(repaired, clean)
            rows.append(row)
        on_image(done, len(found))
    if len(found) == 1 and not rows:
        raise GanDistError(f"{data}: not scored: {skipped[0]['reason']}")
    if not rows:
        reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise GanDistError(
            f"{data}: none of its {len(found)} images could be scored ({reasons}{more})"
        )
    metrics: dict[str, Any] = {"samples": len(rows)}
    for key in (*WHOLE, *IN_HOLE):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            metrics[key] = sum(values) / len(values)
    swd = texture.compute().get("swd")
    if swd is not None:
        metrics["hole_swd"] = swd
    if perceptual is not None:
        metrics.update(perceptual.compute())
    scored = {
        "path": "folder",
        "scale": "native",
        **_sizes(rows),
        "masks": _mask_source(model, masks, steps),
        "hole_coverage_pct": sum(r["hole_pct"] for r in rows) / len(rows),
        "tile": tile,
        "overlap": overlap,
        "precision": ", ".join(sorted({r["precision"] for r in rows})),
    }
    return metrics | {"split": None, "scored": scored, "images": rows, "skipped": skipped}


def _score_one(
    model: RepairModel,
    item: Found,
    masked: bool,
    steps: list[DamageStep],
    tile: int,
    overlap: int,
    batch: int,
    max_pixels: int,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray | None]:
    """(its row, the clean pixels, the repair, the holes) of one image; GanDistError for one
    that cannot be scored, with the reason repair would give where repair gives one."""
    from gan_dist.config.recipe import MaskDamage
    from gan_dist.data.damage import damage_image, sample_rng
    from gan_dist.data.images import read_image
    from gan_dist.metrics.image_metrics import score_image
    from gan_dist.repair.files import read_mask
    from gan_dist.repair.tiles import repair_array

    if item.problem:
        raise GanDistError(item.problem)
    if masked and item.mask is None:
        raise GanDistError(missing_mask(item.no_mask))
    picture = read_image(item.image, max_pixels)
    if picture.pages > 1:
        raise GanDistError(
            f"{picture.pages} pages or frames: repair takes one; split the file and score each page"
        )
    clean = picture.pixels
    height, width = clean.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise GanDistError(f"too small ({width}x{height} px; the minimum side is {MIN_SIDE})")
    rel = item.rel.as_posix()
    cell = int(model.spec["train_image_size"])
    damaged, drawn, _ = damage_image(clean, steps, sample_rng(EVAL_SEED, rel), cell)
    hole = drawn if any(isinstance(s, MaskDamage) for s in steps) else None
    composite = bool(model.spec["model"]["composite"])
    if item.mask is not None:
        hole, _ = read_mask(item.mask, (height, width), max_pixels)
        if composite and not hole.any():
            raise GanDistError(
                f"mask {item.mask} marks no pixel (white = hole): repair leaves the image as "
                "it is; nothing to score"
            )
    repaired = repair_array(model, damaged, hole, tile, overlap, batch)
    scores = score_image(repaired, clean, hole)
    row = {
        "file": rel,
        "size": f"{width}x{height}",
        "bit_depth": picture.bit_depth,
        "mask": str(item.mask) if item.mask is not None else None,
        "hole_pct": 100 * scores.pop("hole_fraction"),
        "precision": model.precision_for(clean.dtype),
        **{k: None if v != v else v for k, v in scores.items()},  # NaN: undefined here
    }
    return row, clean, repaired, hole


def _sizes(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The number of images and the smallest and largest of their sizes (by pixels)."""

    def pixels(row: dict[str, Any]) -> int:
        width, height = map(int, row["size"].split("x"))
        return width * height

    ordered = sorted(rows, key=pixels)
    return {"images": len(rows), "smallest": ordered[0]["size"], "largest": ordered[-1]["size"]}


def _mask_source(model: RepairModel, masks: Path | None, steps: list[DamageStep]) -> str:
    """Where the holes came from, in words (`steps`: the damage applied besides --mask)."""
    from gan_dist.config.recipe import MaskDamage

    label = damage_label(model.spec["damage"])
    if masks is not None:
        told = f"--mask {masks}"
        if steps:  # a restoration model's own damage, on top of the user's holes
            kinds = ", ".join(s.type for s in steps)
            told += f" (and {kinds} of the model's damage {label} at native size, seed {EVAL_SEED})"
        return told
    cell = int(model.spec["train_image_size"])
    if any(isinstance(s, MaskDamage) for s in steps):
        return (
            f"model damage {label} at native size (holes drawn on {cell} px cells, the "
            f"training crop; seed {EVAL_SEED} with each file's path)"
        )
    return (
        f"none: the model's damage {label} applied to each whole image at native size "
        f"(seed {EVAL_SEED} with each file's path)"
    )


def damage_label(raw: list[dict[str, Any]]) -> str:
    """A model's damage steps (spec.json's `damage`) in words: `preset 'inpaint'` where
    they are a preset's, else `steps mask, blur`."""
    from pydantic import TypeAdapter

    from gan_dist.config.recipe import DAMAGE_PRESETS, DamageStep

    adapter = TypeAdapter(list[DamageStep])
    steps = adapter.dump_python(adapter.validate_python(raw), mode="json")
    for name, (_, preset) in DAMAGE_PRESETS.items():
        if adapter.dump_python(adapter.validate_python(preset), mode="json") == steps:
            return f"preset '{name}'"
    return "steps " + ", ".join(step["type"] for step in steps)


__all__ = ["EVAL_SEED", "damage_label", "evaluate_data", "evaluate_folder"]
