"""`repair_metrics` for one whole image of any size (`gan-dist eval` on a folder): PSNR, SSIM
and MS-SSIM over the image; PSNR, SSIM and L1 in the holes; all at full resolution.

A photo's float copies (and SSIM's five filtered maps of them) would take gigabytes, so
nothing is computed on the whole image at once: the uint8/uint16 pixels are read a band of
rows at a time, and the results are exact sums, not estimates. Squared and absolute errors
are summed as integers. SSIM is the torchmetrics definition `repair_metrics` uses (Gaussian
window of 11 px, sigma 1.5, reflected at the image's edges, the map's mean over the whole
image): a band is filtered with PAD rows of its neighbours on each side, so its map is
the whole image's map, row for row. MS-SSIM halves the image per scale (2x2 means, as
torchmetrics does); the half-size image of the first scale is built band by band and kept
(a quarter of the pixels, as float32), the coarser ones from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from gan_dist.metrics.evaluate import MIN_MSE, MS_SSIM_BETAS, SSIM_KERNEL, ms_ssim_scales

SIGMA = 1.5
PAD = SSIM_KERNEL // 2
C1, C2 = 0.01**2, 0.03**2  # (k * data range)^2 with k1 = 0.01, k2 = 0.03 and range 1
BAND_PIXELS = 1 << 19  # pixels of a band of rows: 6 MB a float32 RGB map

Rows = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def score_image(
    pred: np.ndarray,
    target: np.ndarray,
    hole: np.ndarray | None,
    band_pixels: int = BAND_PIXELS,
) -> dict[str, float]:
    """pred (a repair) and target (its original): (H, W, C) uint8 or uint16 arrays of one
    shape and dtype, taken in [0, 1] of the dtype's range (16-bit stays 16-bit); hole
    (H, W) bool or None (no hole). Both sides at least 2 * PAD + 1 px.

    Returns, as floats: psnr, ssim, ms_ssim (over the image), hole_psnr (dB), hole_ssim
    (the SSIM map's mean over the holes), hole_l1 (over the hole pixels), as
    `repair_metrics` defines them for a batch of crops, and hole_fraction (of the pixels,
    0..1). PSNRs are capped at MAX_PSNR; the hole metrics are NaN without a hole, ms_ssim
    below 21 px (`ms_ssim_scales`). Memory grows with `band_pixels` and a quarter of the
    image (MS-SSIM's half-size scale, float32), not with the image. Raises ValueError for
    arrays of different shapes or dtypes."""
    if pred.shape != target.shape or pred.dtype != target.dtype:
        raise ValueError(f"pred {pred.shape} {pred.dtype} and target {target.shape} differ")
    height, width, channels = target.shape
    top = float(np.iinfo(target.dtype).max)
    rows = max(2, band_pixels // width // 2 * 2)  # even: MS-SSIM halves each band on its own
    squared = absolute = hole_squared = holes = 0
    for a in range(0, height, rows):  # the errors: exact integer sums
        err = pred[a : a + rows].astype(np.int64) - target[a : a + rows]
        squared += int((err * err).sum())
        if hole is not None:
            inside = err[hole[a : a + rows]]
            hole_squared += int((inside * inside).sum())
            absolute += int(np.abs(inside).sum())
            holes += int(hole[a : a + rows].sum())

    def full_rows(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        unit = 1 / np.float32(top)
        return tuple(x[lo:hi].transpose(2, 0, 1).astype(np.float32) * unit for x in (pred, target))

    n = height * width * channels
    out = {"psnr": _psnr(squared / n / top**2)}
    scales = ms_ssim_scales(min(height, width))
    half: list[tuple[np.ndarray, np.ndarray]] = []
    ssim, cs, in_hole = _ssim_pass(
        full_rows, height, width, rows, hole, half if scales > 1 else None
    )
    out["ssim"] = ssim / n
    out["ms_ssim"] = math.nan
    if scales:
        values = [cs]
        pred_s = np.concatenate([p for p, _ in half], axis=1)
        target_s = np.concatenate([t for _, t in half], axis=1)
        del half
        for scale in range(1, scales):
            h, w = pred_s.shape[1:]

            def scaled(lo: int, hi: int, p=pred_s, t=target_s) -> tuple[np.ndarray, np.ndarray]:
                return p[:, lo:hi], t[:, lo:hi]

            sim_s, cs_s, _ = _ssim_pass(scaled, h, w, max(2, band_pixels // w), None, None)
            values.append(cs_s if scale < scales - 1 else sim_s / (channels * h * w))
            pred_s, target_s = _halve(pred_s), _halve(target_s)
        betas = MS_SSIM_BETAS[:scales]
        out["ms_ssim"] = math.prod(
            max(v, 0.0) ** (b / sum(betas)) for v, b in zip(values, betas, strict=True)
        )
    nan = math.nan
    out["hole_psnr"] = _psnr(hole_squared / (holes * channels) / top**2) if holes else nan
    out["hole_ssim"] = in_hole / (holes * channels) if holes else nan
    out["hole_l1"] = absolute / (holes * channels) / top if holes else nan
    out["hole_fraction"] = holes / (height * width)
    return out


def _psnr(mse: float) -> float:
    return 10 * math.log10(1 / max(mse, MIN_MSE))


def _halve(x: np.ndarray) -> np.ndarray:
    """(C, h, w) -> the means of its 2x2 blocks, (C, h // 2, w // 2) (avg_pool2d's floor)."""
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    return (x[:, 0:h:2, 0:w:2] + x[:, 1:h:2, 0:w:2] + x[:, 0:h:2, 1:w:2] + x[:, 1:h:2, 1:w:2]) / 4


def _ssim_pass(
    rows_of: Rows,
    height: int,
    width: int,
    rows: int,
    hole: np.ndarray | None,
    half: list[tuple[np.ndarray, np.ndarray]] | None,
) -> tuple[float, float, float]:
    """One scale, a band of `rows` rows at a time: (the SSIM map's sum, the mean of the
    contrast-structure map over the pixels PAD px or more from the edges (MS-SSIM's
    per-scale term), the SSIM map's sum over `hole`). With `half`, each band's 2x2 means
    are appended to it (MS-SSIM's next scale)."""
    ssim = cs = in_hole = 0.0
    channels = 0
    for a in range(0, height, rows):
        b = min(a + rows, height)
        lo, hi = max(0, a - PAD), min(height, b + PAD)
        p, t = rows_of(lo, hi)
        channels = p.shape[0]
        ssim_map, cs_map = _maps(p, t)
        ssim_map, cs_map = ssim_map[:, a - lo : b - lo], cs_map[:, a - lo : b - lo]
        ssim += float(ssim_map.sum(dtype=np.float64))
        inner = cs_map[:, max(PAD - a, 0) : max(min(b, height - PAD) - a, 0), PAD:-PAD]
        cs += float(inner.sum(dtype=np.float64))
        if hole is not None:
            in_hole += float(ssim_map[:, hole[a:b]].sum(dtype=np.float64))
        if half is not None and b - a > 1:  # a last odd row has no half (2x2 means floor)
            half.append((_halve(p[:, a - lo : b - lo]), _halve(t[:, a - lo : b - lo])))
    inner_px = max(height - 2 * PAD, 0) * max(width - 2 * PAD, 0) * channels
    return ssim, cs / inner_px if inner_px else math.nan, in_hole


def _window() -> np.ndarray:
    """torchmetrics' Gaussian: 11 taps, sigma 1.5, summing to 1 (applied along each axis)."""
    dist = np.arange((1 - SSIM_KERNEL) / 2, (1 + SSIM_KERNEL) / 2, 1.0)
    gauss = np.exp(-((dist / SIGMA) ** 2) / 2)
    return gauss / gauss.sum()


def _maps(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) float32 images in [0, 1] -> the SSIM map and the contrast-structure map,
    (C, h, w), the image reflected at its edges (torchmetrics' `_ssim_update`, with the
    Gaussian applied as two 1-D passes; scipy's `mirror` is torch's `reflect`)."""
    from scipy.ndimage import correlate1d

    window = _window()
    stack = np.stack([p, t, p * p, t * t, p * t])
    for axis in (3, 2):
        stack = correlate1d(stack, window, axis=axis, mode="mirror")
    mu_p, mu_t, pp, tt, pt = stack
    mu_pp, mu_tt, mu_pt = mu_p * mu_p, mu_t * mu_t, mu_p * mu_t
    upper = 2 * (pt - mu_pt) + C2
    lower = np.maximum(pp - mu_pp, 0) + np.maximum(tt - mu_tt, 0) + C2
    cs = upper / lower
    return (2 * mu_pt + C1) * cs / (mu_pp + mu_tt + C1), cs


__all__ = ["score_image"]
