from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter

from gan_dist.config.recipe import DAMAGE_PRESETS, DamageStep, damage_preset
from gan_dist.data.damage import apply_damage, draw_mask, sample_rng
from support import gradient16

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


def test_a_photo_gets_holes_of_the_training_crops_pixel_size():
    """`gan-dist eval` damages a photo at its own size: strokes drawn over the whole photo
    would be as wide as a tenth of it, a box half of it; drawn per training-crop cell they
    keep the pixel sizes (and coverage) the model trained on."""
    from scipy import ndimage

    from gan_dist.data.damage import damage_image

    photo_ = np.zeros((600, 900, 3), np.uint8)
    steps = steps_of([{"type": "mask", "shape": "boxes", "coverage": [0.1, 0.3]}])
    damaged, holes, applied = damage_image(photo_, steps, sample_rng(5, "a.jpg"), 64)
    assert damaged is photo_  # no global step: nothing copied; repair blanks the holes
    assert holes.dtype == bool and applied == [{"type": "mask", "cells": 10 * 15}]
    assert 0.1 <= holes.mean() <= 0.4
    boxes = ndimage.find_objects(ndimage.label(holes)[0])
    assert max(b[0].stop - b[0].start for b in boxes) <= 64  # never larger than a cell
    again = damage_image(photo_, steps, sample_rng(5, "a.jpg"), 64)[1]
    other = damage_image(photo_, steps, sample_rng(5, "b.jpg"), 64)[1]
    assert np.array_equal(holes, again) and not np.array_equal(holes, other)
    small = damage_image(photo_[:40, :50], steps, sample_rng(5, "s"), 64)[1]
    assert small.shape == (40, 50) and 0.1 <= small.mean() <= 0.4  # one cell of its own size


def test_a_photo_gets_global_damage_whole_and_16bit():
    from gan_dist.data.damage import damage_image

    clean = gradient16(90, 130, 1)
    steps = steps_of(damage_preset("old-photo"))
    damaged, holes, applied = damage_image(clean, steps, sample_rng(1, "k"), 32)
    assert damaged.dtype == np.uint16 and damaged.shape == clean.shape
    assert np.count_nonzero(damaged % 257) > damaged.size // 4
    assert {a["type"] for a in applied} >= {"mask"} and holes.any()
    assert np.abs(damaged.astype(int) - clean.astype(int))[~holes].mean() > 100
