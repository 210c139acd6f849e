"""LaMa's generator: a ResNet whose blocks are fast Fourier convolutions (Suvorov et al. 2022,
Resolution-robust Large Mask Inpainting with Fourier Convolutions).

Each FFC splits its channels into a local part (ordinary 3x3 convolutions) and a global part
transformed in the frequency domain: a 1x1 convolution over the real FFT of the whole
feature map sees every pixel at once, so even the first blocks have an image-wide receptive
field, which is what a hole larger than a conv stack's reach needs. Layout: 7x7 stem,
`depth` stride-2 downsamplings (the last one splits into local and global channels),
`blocks` FFC residual blocks, nearest-neighbour upsamplings, 7x7 Tanh head.
"""

from __future__ import annotations

import torch
from torch import nn

from gan_dist.config.catalogue import FFC_DEPTH, FFCResNetSettings
from gan_dist.nets.layers import norm_layer, upsample_conv


class FourierUnit(nn.Module):
    """(N, C, H, W) -> (N, C_out, H, W): real FFT over (H, W), a 1x1 conv + norm + ReLU on
    the stacked real and imaginary parts, inverse FFT. The FFT runs in float32 whatever the
    autocast dtype: CPU FFTs have no bf16 kernels, and bf16 spectra would lose the image's
    fine frequencies."""

    def __init__(self, in_ch: int, out_ch: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * in_ch, 2 * out_ch, 1, bias=False)
        self.norm = norm_layer(norm, 2 * out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = x.to(torch.promote_types(x.dtype, torch.float32))
            spectrum = torch.fft.rfft2(x32, norm="ortho")
            f = torch.cat([spectrum.real, spectrum.imag], dim=1)
            f = self.act(self.norm(self.conv(f)))
            real, imag = f.chunk(2, dim=1)
            out = torch.fft.irfft2(torch.complex(real, imag), s=(height, width), norm="ortho")
        return out.to(x.dtype)


class SpectralTransform(nn.Module):
    """LaMa's global branch: 1x1 reduce to half width, FourierUnit with a residual, 1x1 expand."""

    def __init__(self, in_ch: int, out_ch: int, norm: str) -> None:
        super().__init__()
        half = max(1, out_ch // 2)
        self.reduce = nn.Sequential(
            nn.Conv2d(in_ch, half, 1, bias=False), norm_layer(norm, half), nn.ReLU(inplace=True)
        )
        self.fourier = FourierUnit(half, half, norm)
        self.expand = nn.Conv2d(half, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.expand(x + self.fourier(x))


class FFC(nn.Module):
    """One fast Fourier convolution on a (local, global) pair, with norm and ReLU after.

    `ratio_in`/`ratio_out`: the global share of the input/output channels. Local outputs
    sum local->local and global->local convolutions; global outputs sum local->global and the
    spectral transform of the global input. `ratio_in=0` with stride 2 is the split that
    starts the global branch.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        ratio_in: float,
        ratio_out: float,
        norm: str,
        stride: int = 1,
    ) -> None:
        super().__init__()
        in_g, out_g = int(in_ch * ratio_in), int(out_ch * ratio_out)
        in_l, out_l = in_ch - in_g, out_ch - out_g

        def conv(i: int, o: int) -> nn.Module | None:
            if not (i and o):
                return None
            return nn.Conv2d(i, o, 3, stride, 1, padding_mode="reflect", bias=False)

        self.l2l, self.l2g, self.g2l = conv(in_l, out_l), conv(in_l, out_g), conv(in_g, out_l)
        self.g2g = SpectralTransform(in_g, out_g, norm) if in_g and out_g else None
        self.norm_l = norm_layer(norm, out_l) if out_l else None
        self.norm_g = norm_layer(norm, out_g) if out_g else None
        self.act = nn.ReLU(inplace=True)

    def forward(
        self, x: tuple[torch.Tensor, torch.Tensor | None]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x_l, x_g = x
        out_l = out_g = None
        if self.norm_l is not None:
            out_l = self.l2l(x_l) if self.l2l is not None else 0
            if self.g2l is not None:
                out_l = out_l + self.g2l(x_g)
            out_l = self.act(self.norm_l(out_l))
        if self.norm_g is not None:
            out_g = self.l2g(x_l) if self.l2g is not None else 0
            if self.g2g is not None:
                out_g = out_g + self.g2g(x_g)
            out_g = self.act(self.norm_g(out_g))
        return out_l, out_g


class FFCBlock(nn.Module):
    """Two FFCs with a residual connection on each branch."""

    def __init__(self, width: int, ratio: float, norm: str) -> None:
        super().__init__()
        self.first = FFC(width, width, ratio, ratio, norm)
        self.second = FFC(width, width, ratio, ratio, norm)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x_l, x_g = x
        y_l, y_g = self.second(self.first(x))
        return x_l + y_l, x_g + y_g


class FFCResNet(nn.Module):
    """(N, C_in, H, W) -> (N, C_out, H, W) in [-1, 1]; H and W divisible by 2**depth."""

    def __init__(
        self, in_ch: int, out_ch: int, base: int, depth: int, blocks: int, ratio: float, norm: str
    ) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        down: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_ch, base, 7, bias=False),
            norm_layer(norm, base),
            nn.ReLU(inplace=True),
        ]
        for i in range(depth - 1):
            down += [
                nn.Conv2d(widths[i], widths[i + 1], 3, 2, 1, padding_mode="reflect", bias=False),
                norm_layer(norm, widths[i + 1]),
                nn.ReLU(inplace=True),
            ]
        self.down = nn.Sequential(*down)
        self.split = FFC(widths[depth - 1], widths[depth], 0.0, ratio, norm, stride=2)
        self.blocks = nn.ModuleList(FFCBlock(widths[depth], ratio, norm) for _ in range(blocks))
        up: list[nn.Module] = []
        for i in reversed(range(depth)):
            up += [upsample_conv(widths[i + 1], widths[i]), norm_layer(norm, widths[i]), nn.ReLU()]
        up += [nn.ReflectionPad2d(3), nn.Conv2d(base, out_ch, 7), nn.Tanh()]
        self.up = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pair = self.split((self.down(x), None))
        for block in self.blocks:
            pair = block(pair)
        return self.up(torch.cat(pair, dim=1))


def build(
    settings: FFCResNetSettings, in_channels: int, out_channels: int, image_size: int
) -> nn.Module:
    depth = settings.depth or FFC_DEPTH
    if image_size % 2**depth:
        raise ValueError(f"ffc_resnet depth {depth} needs an image size divisible by {2**depth}")
    return FFCResNet(
        in_channels,
        out_channels,
        settings.base_channels,
        depth,
        settings.blocks,
        settings.global_ratio,
        settings.norm,
    )
