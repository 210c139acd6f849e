"""Metrics of one whole image at full resolution (`gan-dist eval` on a folder): a band of
rows at a time, yet the same figures as the batch metrics of training computed on the whole
image at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gan_dist.metrics.evaluate import ms_ssim, ms_ssim_scales, repair_metrics
from gan_dist.metrics.image_metrics import score_image
from gan_dist.metrics.swd import HoleSWD


def _pair(height: int, width: int, channels: int, dtype, seed: int = 0):
    """An image, a repair of it off by up to a tenth of the range, and a hole map."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    target = rng.integers(0, top, (height, width, channels), dtype=dtype, endpoint=True)
    noise = rng.integers(-top // 10, top // 10, target.shape)
    pred = np.clip(target.astype(np.int64) + noise, 0, top).astype(dtype)
    hole = np.zeros((height, width), bool)
    hole[height // 8 : height // 2, width // 3 : width // 2] = True
    hole[-9:-2, 3:12] = True  # near an edge: the patches there are reflected
    return pred, target, hole


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    top = np.iinfo(pixels.dtype).max
    return torch.from_numpy(pixels.astype(np.float32) / top).permute(2, 0, 1)[None]


SHAPES = [(37, 45, 3, np.uint8), (200, 300, 3, np.uint8), (181, 97, 1, np.uint16)]


@pytest.mark.parametrize(("height", "width", "channels", "dtype"), SHAPES)
def test_banded_metrics_are_the_whole_images(height, width, channels, dtype):
    """Bands of 2, 8 and all rows: the figures of `repair_metrics` on the whole image."""
    pred, target, hole = _pair(height, width, channels, dtype)
    mask = torch.from_numpy(hole)[None, None].float()
    whole = {
        k: float(v[0]) for k, v in repair_metrics(_tensor(pred), _tensor(target), mask).items()
    }
    for band in (2 * width, 8 * width, height * width):
        scores = score_image(pred, target, hole, band_pixels=band)
        assert scores["hole_fraction"] == pytest.approx(hole.mean())
        for key, value in whole.items():
            assert scores[key] == pytest.approx(value, abs=2e-5), (band, key)


def test_16bit_levels_count_as_16bit():
    """One 16-bit level of error is 1/65535 of the range, not 1/255 (nor nothing)."""
    target = np.full((64, 48, 1), 30000, np.uint16)
    pred = target.copy()
    hole = np.zeros((64, 48), bool)
    hole[10:20, 10:20] = True
    pred[hole] += 1
    scores = score_image(pred, target, hole)
    assert scores["hole_psnr"] == pytest.approx(20 * np.log10(65535), abs=1e-9)
    assert scores["hole_l1"] == pytest.approx(1 / 65535)
    assert np.isnan(score_image(pred, target, None)["hole_psnr"])


@pytest.mark.parametrize("side", [44, 96, 170])
def test_ms_ssim_takes_the_scales_torchmetrics_accepts(side):
    """The whole-image MS-SSIM takes the scales the batch one does (`ms_ssim_scales`)."""
    pred, target, _ = _pair(side, side, 3, np.uint8)
    assert ms_ssim_scales(side) >= 2
    batch = float(ms_ssim(_tensor(pred), _tensor(target))[0])
    assert score_image(pred, target, None)["ms_ssim"] == pytest.approx(batch, abs=2e-5)


@pytest.mark.parametrize(("height", "width", "channels", "dtype"), SHAPES)
def test_banded_texture_patches_are_the_whole_images(height, width, channels, dtype):
    """`HoleSWD.add_image` draws the patches `add` draws from the whole image at once, from
    a pyramid built a few rows at a time (odd sides included)."""
    pred, target, hole = _pair(height, width, channels, dtype, seed=1)
    whole = HoleSWD()
    mask = torch.from_numpy(hole)[None, None].float()
    for _ in range(2):
        whole.add(_tensor(pred), _tensor(target), mask)
    score = whole.compute()["swd"]  # once: each call draws new projections
    for band in (4 * width, 16 * width, 1 << 20):
        banded = HoleSWD()
        for _ in range(2):
            banded.add_image(pred, target, hole, band_pixels=band)
        for level in range(3):
            for side in ("fake", "real"):
                ours, theirs = getattr(banded, side)[level], getattr(whole, side)[level]
                assert len(ours) == len(theirs)
                for a, b in zip(ours, theirs, strict=True):
                    assert torch.allclose(a, b, atol=1e-6), (band, level, side)
        assert banded.compute()["swd"] == pytest.approx(score, rel=1e-5)


def test_a_greyscale_image_joins_colour_ones_in_the_texture_score():
    pred, target, hole = _pair(64, 64, 1, np.uint8)
    colour = _pair(64, 64, 3, np.uint8)
    swd = HoleSWD()
    swd.add_image(*colour, channels=3)
    swd.add_image(pred, target, hole, channels=3)
    assert swd.compute()["swd"] > 0
