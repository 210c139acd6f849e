"""Validation metrics on the val shards: PSNR and SSIM over the image, PSNR and L1 inside
the hole (the pixels the model had to invent, where inpainting quality shows).

Each rank evaluates its own shards; sums are reduced across ranks at the end only, so
ranks with different numbers of batches never wait on each other mid-pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)


def repair_metrics(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-image metrics for images in [0, 1]: psnr and ssim over the image, hole_psnr and
    hole_l1 over the masked pixels (NaN for an image without a hole)."""
    psnr = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
    hole = mask.expand_as(pred)
    hole_px = hole.sum(dim=(1, 2, 3))
    err = (pred - target) * hole
    hole_mse = (err**2).sum(dim=(1, 2, 3)) / hole_px.clamp(min=1)
    hole_l1 = err.abs().sum(dim=(1, 2, 3)) / hole_px.clamp(min=1)
    no_hole = hole_px == 0
    nan = torch.full_like(hole_mse, float("nan"))
    return {
        "psnr": psnr,
        "ssim": ssim,
        "hole_psnr": torch.where(no_hole, nan, 10 * torch.log10(1.0 / hole_mse.clamp(min=1e-10))),
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
) -> dict[str, float]:
    """reduce_sum adds the sums of all ranks (in training); alone, nothing to add.
    `should_stop` ends the pass early (a stop signal); the sums are still reduced once, so
    ranks that stop at different batches do not wait on each other."""
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    for i, batch in enumerate(batches):
        if (max_batches is not None and i >= max_batches) or should_stop():
            break
        damaged, clean, mask = (batch[k].to(device) for k in ("damaged", "clean", "mask"))
        with autocast():
            repaired = generator(damaged, mask)
        pred = ((repaired.float() + 1) / 2).clamp(0, 1)
        m = repair_metrics(pred, (clean.float() + 1) / 2, mask)
        has_hole = ~torch.isnan(m["hole_psnr"])
        sums += torch.stack(
            [
                torch.tensor(float(len(pred)), device=device),
                m["psnr"].sum(),
                m["ssim"].sum(),
                has_hole.sum(),
                m["hole_psnr"][has_hole].sum(),
                m["hole_l1"][has_hole].sum(),
            ]
        ).to(torch.float64)
    sums = reduce_sum(sums)
    n, psnr, ssim, n_hole, hole_psnr, hole_l1 = sums.tolist()
    out = {"samples": int(n)}
    if n:
        out.update({"psnr": psnr / n, "ssim": ssim / n})
    if n_hole:
        out.update({"hole_psnr": hole_psnr / n_hole, "hole_l1": hole_l1 / n_hole})
    return out
