"""gan-dist plugin families: a full-resolution residual generator, a two-layer PatchGAN and
the non-saturating loss with one-sided label smoothing (Salimans et al. 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from gan_dist.config.family import Family, Settings
from gan_dist.train.losses import Adversarial


class ToyResNetSettings(Settings):
    width: PositiveInt = 16
    blocks: PositiveInt = Field(2, le=32)


class ToyResNet(nn.Module):
    def __init__(self, settings: ToyResNetSettings, in_channels: int, out_channels: int) -> None:
        super().__init__()
        w = settings.width
        self.stem = nn.Conv2d(in_channels, w, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(w, w, 3, padding=1)) for _ in range(settings.blocks)
        )
        self.head = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return torch.tanh(self.head(x))


def build_generator(settings, in_channels, out_channels, image_size):
    return ToyResNet(settings, in_channels, out_channels)


class ToyPatch(nn.Module):
    def __init__(self, width: int, in_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2))
        self.head = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, features: bool = False):
        hidden = self.body(x)
        logits = self.head(hidden)
        return (logits, [hidden]) if features else logits


class ToyPatchSettings(Settings):
    width: PositiveInt = 16


class SmoothingSettings(Settings):
    smoothing: float = Field(0.1, ge=0.0, lt=0.5, description="real target is 1 - smoothing")


def build_smooth_bce(settings: SmoothingSettings) -> Adversarial:
    real_target = 1.0 - settings.smoothing
    return Adversarial(
        real=lambda x: F.binary_cross_entropy_with_logits(
            x, torch.full_like(x, real_target), reduction="none"
        ),
        fake=lambda x: F.softplus(x),
        g=lambda x: F.softplus(-x),
    )


generator = Family(build_generator, ToyResNetSettings, about="full-resolution residual net")
discriminator = Family(
    lambda s, in_channels, image_size: ToyPatch(s.width, in_channels), ToyPatchSettings
)
smooth_bce = Family(build_smooth_bce, SmoothingSettings, about="label-smoothed non-saturating loss")
