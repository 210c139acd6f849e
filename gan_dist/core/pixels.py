"""The nets' pixel convention, in one place. Images are unsigned integers (8 or 16 bit) in
files, shards and repairs; the nets take and make values in [-1, 1] (black -1, white 1; holes
are -1 before the net sees them); metrics and losses defined on [0, 1] (PSNR, SSIM) take
`to_unit` of them. The functions work on numpy arrays and torch tensors alike, except where
their docstring says otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Values = TypeVar("Values", np.ndarray, "torch.Tensor")


def to_signed(pixels: np.ndarray) -> np.ndarray:
    """uint8/uint16 pixels (any shape) -> float32 in [-1, 1]: 0 -> -1, the type's largest
    value -> 1. A new array, scaled in place (no temporaries: the data loader's hot path)."""
    out = pixels.astype(np.float32)
    out *= 2 / float(np.iinfo(pixels.dtype).max)
    out -= 1
    return out


def to_unit(values: Values) -> Values:
    """[-1, 1] -> [0, 1], for numpy arrays or torch tensors (not clipped)."""
    return (values + 1) / 2


def to_uint8(values: torch.Tensor) -> torch.Tensor:
    """A torch tensor in [-1, 1] -> uint8 0..255, clipped and rounded (for pictures people
    look at: the repair grid)."""
    return (to_unit(values.clamp(-1, 1)) * 255).round().byte()
