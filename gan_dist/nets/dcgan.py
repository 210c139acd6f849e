"""DCGAN families (Radford et al. 2016): all-convolutional, strided down, transposed up,
BatchNorm except at the generator's output and the discriminator's input, ReLU in the
generator (Tanh out), LeakyReLU(0.2) in the discriminator, N(0, 0.02) initialisation.

As a repair generator it is an encoder-decoder (Context Encoders style) without skips.
"""

from __future__ import annotations

from torch import nn

from gan_dist.config.catalogue import DCGANSettings, downsamplings
from gan_dist.nets.layers import dcgan_init, norm_layer


def _encoder(in_ch: int, base: int, steps: int, norm: str) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    prev = in_ch
    for i in range(steps):
        width = min(base * 2**i, base * 8)
        layers.append(nn.Conv2d(prev, width, 4, stride=2, padding=1, bias=i == 0))
        if i > 0:
            layers.append(norm_layer(norm, width))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        prev = width
    return nn.Sequential(*layers), prev


def build_generator(
    settings: DCGANSettings, in_channels: int, out_channels: int, image_size: int
) -> nn.Module:
    steps = settings.depth or downsamplings(image_size)
    encoder, width = _encoder(in_channels, settings.base_channels, steps, settings.norm)
    layers: list[nn.Module] = [encoder]
    for i in reversed(range(steps - 1)):
        nxt = min(settings.base_channels * 2**i, settings.base_channels * 8)
        layers += [
            nn.ConvTranspose2d(width, nxt, 4, stride=2, padding=1, bias=False),
            norm_layer(settings.norm, nxt),
            nn.ReLU(inplace=True),
        ]
        width = nxt
    layers += [nn.ConvTranspose2d(width, out_channels, 4, stride=2, padding=1), nn.Tanh()]
    net = nn.Sequential(*layers)
    dcgan_init(net)
    return net


def build_discriminator(settings: DCGANSettings, in_channels: int, image_size: int) -> nn.Module:
    """Global: strided convs down to 4x4, then one 4x4 conv to a single logit per image."""
    encoder, width = _encoder(
        in_channels, settings.base_channels, downsamplings(image_size), settings.norm
    )
    net = _WithFeatures(encoder, nn.Conv2d(width, 1, 4))
    dcgan_init(net)
    return net


class _WithFeatures(nn.Module):
    """A discriminator that can also return its intermediate activations (feature matching)."""

    def __init__(self, body: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x, features: bool = False):
        feats = []
        for layer in self.body:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        logits = self.head(x)
        return (logits, feats) if features else logits
