"""pix2pix's PatchGAN: a grid of logits, each judging one receptive-field patch of the
(damaged, mask, candidate) stack, so the critique is local and in context."""

from __future__ import annotations

from torch import nn

from gan_dist.config.catalogue import PatchGANSettings
from gan_dist.nets.dcgan import _WithFeatures
from gan_dist.nets.layers import norm_layer


def build(settings: PatchGANSettings, in_channels: int, image_size: int) -> nn.Module:
    base, layers_n = settings.base_channels, settings.layers
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, base, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    width = base
    for i in range(1, layers_n + 1):
        nxt = min(base * 2**i, base * 8)
        stride = 2 if i < layers_n else 1
        layers += [
            nn.Conv2d(width, nxt, 4, stride=stride, padding=1, bias=settings.norm == "none"),
            norm_layer(settings.norm, nxt),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = nxt
    return _WithFeatures(nn.Sequential(*layers), nn.Conv2d(width, 1, 4, padding=1))
