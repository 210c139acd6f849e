"""pix2pix's skip U-Net, with nearest-neighbour upsampling instead of transposed convs, and
optionally DeepFill v2's gated convolutions (Yu et al. 2019, Free-Form Image Inpainting with
Gated Convolution): each conv also learns a soft per-pixel gate, so features computed from
hole pixels (whose input is only the prefill) can be told apart from valid ones at every
layer, not only at the input."""

from __future__ import annotations

import torch
from torch import nn

from gan_dist.config.catalogue import UNetSettings, downsamplings
from gan_dist.nets.layers import norm_layer, upsample_conv


class Gate(nn.Module):
    """(N, 2C, H, W) -> (N, C, H, W): act(norm(feature)) * sigmoid(gate), the preceding conv
    having produced feature and gate as the two halves of its channels (DeepFill v2)."""

    def __init__(self, norm: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.norm, self.act = norm, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature, gate = x.chunk(2, dim=1)
        return self.act(self.norm(feature)) * torch.sigmoid(gate)


def _activated(norm: nn.Module, act: nn.Module, gated: bool) -> list[nn.Module]:
    return [Gate(norm, act)] if gated else [norm, act]


class UNet(nn.Module):
    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        base: int,
        depth: int,
        norm: str,
        dropout: float,
        gated: bool = False,
    ) -> None:
        super().__init__()
        widths = [min(base * 2**i, base * 8) for i in range(depth)]
        convs = 2 if gated else 1  # a gated conv computes feature and gate together
        self.downs = nn.ModuleList()
        prev = in_ch
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [
                nn.Conv2d(prev, convs * width, 4, stride=2, padding=1, bias=False),
                *_activated(
                    norm_layer(norm, width) if i > 0 else nn.Identity(),
                    nn.LeakyReLU(0.2, inplace=not gated),
                    gated,
                ),
            ]
            self.downs.append(nn.Sequential(*layers))
            prev = width
        self.ups = nn.ModuleList()
        for i in reversed(range(depth)):
            skip = widths[i - 1] if i > 0 else 0
            width = widths[i - 1] if i > 0 else base
            layers = [
                upsample_conv(prev, convs * width),
                *_activated(norm_layer(norm, width), nn.ReLU(inplace=not gated), gated),
            ]
            if dropout and i >= depth - 3 and i > 0:
                layers.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*layers))
            prev = width + skip
        self.out = nn.Sequential(nn.Conv2d(prev, out_ch, 3, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck has no partner
        for up in self.ups:
            x = up(x)
            if skips:
                x = torch.cat([x, skips.pop()], dim=1)
        return self.out(x)


def build(
    settings: UNetSettings, in_channels: int, out_channels: int, image_size: int
) -> nn.Module:
    depth = settings.depth or downsamplings(image_size)
    if image_size % 2**depth:
        raise ValueError(f"unet depth {depth} needs an image size divisible by {2**depth}")
    return UNet(
        in_channels,
        out_channels,
        settings.base_channels,
        depth,
        settings.norm,
        settings.dropout,
        settings.gated,
    )
