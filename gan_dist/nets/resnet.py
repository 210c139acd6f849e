"""The pix2pix/CycleGAN ResNet generator: 7x7 stem, two stride-2 downsamplings, residual
blocks at 1/4 resolution, two upsamplings (nearest + conv), 7x7 Tanh head."""

from __future__ import annotations

import torch
from torch import nn

from gan_dist.config.catalogue import ResNetSettings
from gan_dist.nets.layers import norm_layer, upsample_conv


class _Block(nn.Module):
    def __init__(self, width: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=False),
            norm_layer(norm, width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=False),
            norm_layer(norm, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def build(
    settings: ResNetSettings, in_channels: int, out_channels: int, image_size: int
) -> nn.Module:
    if image_size % 4:
        raise ValueError("resnet needs an image size divisible by 4")
    b, norm = settings.base_channels, settings.norm
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(in_channels, b, 7, bias=False),
        norm_layer(norm, b),
        nn.ReLU(inplace=True),
    ]
    for mult in (1, 2):
        layers += [
            nn.Conv2d(b * mult, b * mult * 2, 3, stride=2, padding=1, bias=False),
            norm_layer(norm, b * mult * 2),
            nn.ReLU(inplace=True),
        ]
    layers += [_Block(b * 4, norm, settings.dropout) for _ in range(settings.blocks)]
    for mult in (4, 2):
        layers += [
            upsample_conv(b * mult, b * mult // 2),
            norm_layer(norm, b * mult // 2),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(b, out_channels, 7), nn.Tanh()]
    return nn.Sequential(*layers)
