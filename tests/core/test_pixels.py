"""The nets' pixel convention (`pixels.py`), which the stream, repair, the repair grid,
the SSIM loss and evaluation share: the ends land on -1 and 1 and every level comes back."""

from __future__ import annotations

import numpy as np
import torch

from gan_dist.core.pixels import to_signed, to_uint8, to_unit
from gan_dist.data.images import from_float


def test_every_level_maps_into_the_range_and_back():
    for dtype in (np.uint8, np.uint16):
        levels = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
        signed = to_signed(levels)
        assert signed.dtype == np.float32 and signed[0] == -1.0 and signed[-1] == 1.0
        assert np.array_equal(from_float(to_unit(signed), dtype), levels)
        assert (
            np.array_equal(to_uint8(torch.from_numpy(signed)).numpy(), levels) or dtype != np.uint8
        )


def test_values_beyond_the_range_are_clipped_for_pictures():
    assert to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5])).tolist() == [0, 0, 128, 255, 255]
