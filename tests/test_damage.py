from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter

from conftest import gradient16
from gan_dist.data.damage import apply_damage, draw_mask, sample_rng
from gan_dist.recipe import DAMAGE_PRESETS, DamageStep, damage_preset

steps_of = TypeAdapter(list[DamageStep]).validate_python


def photo(channels: int = 3) -> np.ndarray:
    import skimage.data
    from PIL import Image

    im = Image.fromarray(skimage.data.astronaut()).resize((96, 96))
    arr = np.asarray(im)
    return arr if channels == 3 else arr[:, :, :1].copy()


def test_same_seed_and_key_give_the_same_damage():
    steps = steps_of(damage_preset("old-photo"))
    a = apply_damage(photo(), steps, sample_rng(3, "dir/a.png#0"))
    b = apply_damage(photo(), steps, sample_rng(3, "dir/a.png#0"))
    c = apply_damage(photo(), steps, sample_rng(3, "dir/a.png#1"))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("shape", ["strokes", "boxes"])
def test_mask_coverage_stays_in_the_requested_range(shape):
    rng = np.random.default_rng(0)
    covers = [
        float(np.mean(draw_mask(128, 128, shape, t, rng) > 0)) for t in np.linspace(0.1, 0.4, 12)
    ]
    targets = np.linspace(0.1, 0.4, 12)
    assert all(c >= t for c, t in zip(covers, targets, strict=True))
    assert all(c <= t + 0.1 for c, t in zip(covers, targets, strict=True))


def test_mask_marks_holes_and_holes_hold_the_fill_value():
    steps = steps_of([{"type": "mask", "coverage": [0.2, 0.3], "fill": 0.0}])
    damaged, mask, applied = apply_damage(photo(), steps, sample_rng(0, "k"))
    hole = mask > 0
    assert set(np.unique(mask)) == {0, 255}
    assert 0.2 <= hole.mean() <= 0.4
    assert np.all(damaged[hole] == 0)
    np.testing.assert_array_equal(damaged[~hole], photo()[~hole])
    assert applied[0]["coverage"] == pytest.approx(hole.mean(), abs=1e-4)


@pytest.mark.parametrize("preset", ["denoise", "low-dose", "deblur", "jpeg", "superres"])
def test_global_damage_changes_pixels_but_removes_none(preset):
    clean = photo()
    damaged, mask, applied = apply_damage(
        clean, steps_of(damage_preset(preset)), sample_rng(1, "k")
    )
    assert damaged.shape == clean.shape and damaged.dtype == clean.dtype
    assert not mask.any()
    assert np.abs(damaged.astype(int) - clean.astype(int)).mean() > 0.5
    assert len(applied) == 1


@pytest.mark.parametrize("preset", sorted(DAMAGE_PRESETS))
def test_every_preset_keeps_16bit_depth(preset):
    clean = (photo(1).astype(np.uint16) * 257) + gradient16(96, 96, 1) % 200
    damaged, _, _ = apply_damage(clean, steps_of(damage_preset(preset)), sample_rng(2, "k"))
    assert damaged.dtype == np.uint16
    assert np.count_nonzero(damaged % 257) > damaged.size // 4  # real 16-bit values remain


def test_probability_zero_skips_a_step():
    steps = steps_of([{"type": "blur", "p": 0.0}])
    damaged, _, applied = apply_damage(photo(), steps, sample_rng(0, "k"))
    assert applied == []
    np.testing.assert_array_equal(damaged, photo())
