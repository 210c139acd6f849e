"""Validation metrics on the val shards: PSNR, SSIM and MS-SSIM over the image; PSNR, SSIM
and L1 inside the hole (the pixels the model had to invent, where inpainting quality shows);
and the texture of the repair, the sliced Wasserstein distance of its patches in and around
the hole to the original's (`swd.py`: lower is better; no pretrained weights). FID, KID and
LPIPS join them when the user gives their nets' weights (`perceptual.py`).

Each rank evaluates its own shards; sums are reduced across ranks at the end only, so
ranks with different numbers of batches never wait on each other mid-pass. SWD, a distance
between patch distributions, is computed per rank on its own samples and averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch

from gan_dist.core.errors import GanDistError
from gan_dist.core.pixels import to_unit
from gan_dist.metrics.perceptual import PerceptualMetrics
from gan_dist.metrics.swd import HoleSWD

if TYPE_CHECKING:  # the caller loads it: train/ never loads models from the registry
    from pathlib import Path

    from gan_dist.metrics.perceptual import PerceptualWeights
    from gan_dist.repair.model_file import RepairModel

# Wang et al. 2003's scale weights; small images use the finest scales that fit, renormalised
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_KERNEL = 11
MAX_PSNR = 100.0  # dB: MSE 1e-10 of the [0, 1] range, far below one level of a 16-bit image
MIN_MSE = 10 ** (-MAX_PSNR / 10)


def ms_ssim_scales(side: int) -> int:
    """How many of MS-SSIM's five scales an image whose shorter side is `side` px gets: as
    many as keep the coarsest over 2 * (SSIM_KERNEL - 1) px and that torchmetrics accepts
    (it wants side // (scales - 1)**2 over SSIM_KERNEL - 1: 96 px gets 3 scales, not 4);
    0 below 21 px, where one scale is left and it would only repeat SSIM."""
    if side <= 2 * (SSIM_KERNEL - 1):
        return 0
    scales = 1
    while scales < len(MS_SSIM_BETAS) and (SSIM_KERNEL - 1) * 2**scales < side:
        scales += 1
    while side // (scales - 1) ** 2 <= SSIM_KERNEL - 1:
        scales -= 1
    return scales


def ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image MS-SSIM (Wang et al. 2003) of images in [0, 1], (B,) in [0, 1], over
    `ms_ssim_scales` scales (all five from 176 px), their weights renormalised; NaN below
    21 px."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    scales = ms_ssim_scales(min(pred.shape[-2:]))
    if not scales:
        return torch.full((len(pred),), float("nan"), device=pred.device)
    betas = MS_SSIM_BETAS[:scales]
    return multiscale_structural_similarity_index_measure(
        pred,
        target,
        data_range=1.0,
        reduction="none",
        betas=tuple(b / sum(betas) for b in betas),
        normalize="relu",  # no NaN from a negative contrast term at a coarse scale
    )


def repair_metrics(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-image metrics for images in [0, 1]: psnr, ssim and ms_ssim over the image;
    hole_psnr (dB), hole_ssim (the SSIM map's mean over the hole) and hole_l1 over the masked
    pixels (NaN for an image without a hole). PSNR is capped at MAX_PSNR dB: an exact
    image has an infinite one, which JSON cannot hold and no mean survives."""
    # torchmetrics pulls in torchvision and torch._dynamo (about 2 s): only where validation runs
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    psnr = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    psnr = psnr.clamp(max=MAX_PSNR)
    ssim, ssim_map = structural_similarity_index_measure(
        pred, target, data_range=1.0, reduction="none", return_full_image=True
    )
    hole = mask.expand_as(pred)
    hole_px = hole.sum(dim=(1, 2, 3))
    err = (pred - target) * hole
    hole_mse = (err**2).sum(dim=(1, 2, 3)) / hole_px.clamp(min=1)
    hole_l1 = err.abs().sum(dim=(1, 2, 3)) / hole_px.clamp(min=1)
    no_hole = hole_px == 0
    nan = torch.full_like(hole_mse, float("nan"))
    hole_ssim = (ssim_map * hole).sum(dim=(1, 2, 3)) / hole_px.clamp(min=1)
    return {
        "psnr": psnr,
        "ssim": ssim,
        "ms_ssim": ms_ssim(pred, target),
        "hole_psnr": torch.where(
            no_hole, nan, 10 * torch.log10(1.0 / hole_mse.clamp(min=10 ** (-MAX_PSNR / 10)))
        ),
        "hole_ssim": torch.where(no_hole, nan, hole_ssim),
        "hole_l1": torch.where(no_hole, nan, hole_l1),
    }


@torch.no_grad()
def evaluate(
    generator: torch.nn.Module,
    batches: Iterable[dict],
    device: torch.device | str,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    max_batches: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    perceptual: PerceptualMetrics | None = None,
) -> dict[str, float]:
    """reduce_sum adds the sums of all ranks (in training); alone, nothing to add.
    `should_stop` ends the pass early (a stop signal); the sums are still reduced once, so
    ranks that stop at different batches do not wait on each other. `perceptual`: FID, KID
    and LPIPS too (emptied first; torchmetrics gathers them over the ranks)."""
    if perceptual is not None:
        perceptual.reset()
    whole, in_hole = ("psnr", "ssim", "ms_ssim"), ("hole_psnr", "hole_ssim", "hole_l1")
    sums = torch.zeros(2 + len(whole) + len(in_hole) + 2, dtype=torch.float64, device=device)
    texture = HoleSWD()
    for i, batch in enumerate(batches):
        if (max_batches is not None and i >= max_batches) or should_stop():
            break
        damaged, clean, mask = (batch[k].to(device) for k in ("damaged", "clean", "mask"))
        with autocast():
            repaired = generator(damaged, mask)
        pred = to_unit(repaired.float()).clamp(0, 1)
        target = to_unit(clean.float())
        m = repair_metrics(pred, target, mask)
        texture.add(pred, target, mask)
        if perceptual is not None:
            perceptual.add(pred, target)
        has_hole = ~torch.isnan(m["hole_psnr"])
        sums[:-2] += torch.stack(
            [
                torch.tensor(float(len(pred)), device=device),
                *(m[k].sum() for k in whole),
                has_hole.sum(),
                *(m[k][has_hole].sum() for k in in_hole),
            ]
        ).to(torch.float64)
    swd = texture.compute().get("swd")
    if swd is not None:  # this rank's texture score, averaged over the ranks that have one
        sums[-2:] = torch.tensor([swd, 1.0], dtype=torch.float64, device=device)
    sums = reduce_sum(sums).tolist()
    n, n_hole = sums[0], sums[1 + len(whole)]
    out: dict[str, float] = {"samples": int(n)}
    if n:
        out.update({k: v / n for k, v in zip(whole, sums[1 : 1 + len(whole)], strict=True)})
    if n_hole:
        holes = sums[2 + len(whole) : 2 + len(whole) + len(in_hole)]
        out.update({k: v / n_hole for k, v in zip(in_hole, holes, strict=True)})
    if sums[-1]:
        out["hole_swd"] = sums[-2] / sums[-1]
    if perceptual is not None:
        out.update(perceptual.compute())
    return {k: v for k, v in out.items() if v == v}  # NaN: undefined here (ms_ssim < 21 px)


# --- a saved model, outside training (`gan-dist eval`) ------------------------------------


def evaluate_model(
    model: RepairModel,
    data: Path,
    batch_size: int = 16,
    weights: PerceptualWeights | None = None,
) -> dict[str, Any]:
    """`evaluate`'s metrics of a saved model (`gan-dist eval`) on packed shards (their val
    split, or train when there is none), as packed: crops of the pack's size with the
    pack's holes (clean images are scored whole by `repair.evaluate.evaluate_folder`). With
    `weights`, FID, KID and LPIPS too (WeightsError for a bad file, before any image is
    read).

    A score needs at least one scored sample: shards the model cannot read (other channels,
    a size its down-samplings do not divide), an empty split, or samples that all fail to
    decode are a GanDistError saying which, never `samples: 0` and a success. Beside the
    metrics: `split`, the split scored; `scored`, what was scored (`path` shards, `scale`
    `packed crops N px`, `split`, `images` (samples), the `smallest` and `largest` sizes,
    `masks`, the holes' source, `hole_coverage_pct`, from the manifest, `precision`);
    `skipped`, empty (kept for the report's shape)."""
    from gan_dist.data.pack import MANIFEST, read_manifest
    from gan_dist.data.stream import StreamConfig, make_stream

    if not (data / MANIFEST).is_file():
        raise GanDistError(f"{data}: no {MANIFEST}; not packed shards")
    device = next(model.net.parameters()).device
    perceptual = PerceptualMetrics(weights, device) if weights else None
    manifest = read_manifest(data)
    _check_shards_fit(model, manifest, data)
    counts = manifest["counts"]
    split = "val" if counts.get("val") else "train"
    if not counts.get(split):
        raise GanDistError(f"{data}: no samples in its val or train split; nothing to score")
    stream = make_stream(
        str(data), StreamConfig(batch_size, model.channels, train=False), split=split
    )
    try:
        metrics = evaluate(model.net, stream, device, perceptual=perceptual)
    finally:
        stream.close()
    if not metrics["samples"]:
        raise GanDistError(
            f"{data}: none of the {counts[split]} {split} samples could be scored "
            f"({stream.skipped} unreadable; see the warnings above)"
        )
    size = int(manifest["image_size"])
    coverage = (manifest.get("mean_mask_coverage") or {}).get(split)
    if manifest.get("mode") == "paired":
        holes = "packed with the shards (the pairs' own masks)"
    else:
        holes = f"packed with the shards (damage {manifest.get('damage_source') or 'unnamed'})"
    scored = {
        "path": "shards",
        "scale": f"packed crops {size} px",
        "split": split,
        "images": metrics["samples"],
        "smallest": f"{size}x{size}",
        "largest": f"{size}x{size}",
        "masks": holes,
        "hole_coverage_pct": None if coverage is None else 100 * coverage,
        "precision": "fp32",
    }
    return metrics | {"split": split, "scored": scored, "skipped": []}


def _check_shards_fit(model: RepairModel, manifest: dict[str, Any], data: Path) -> None:
    """Before streaming: a mismatch would make every sample fail, one warning at a time."""
    channels, size = int(manifest["channels"]), int(manifest["image_size"])
    if channels != model.channels:
        raise GanDistError(
            f"{data} holds {channels}-channel images, the model {model.source} takes "
            f"{model.channels}-channel ones: evaluate it on shards packed with "
            f"`gan-dist data pack --channels {model.channels}`, or on a folder of images"
        )
    divisor = model.size_divisor
    if size % divisor:
        raise GanDistError(
            f"{data} holds {size} px images; the model {model.source} needs sides that are a "
            f"multiple of {divisor}: re-pack them (`gan-dist data pack --size "
            f"{max(divisor, size // divisor * divisor)}`) or evaluate on a folder of images"
        )
