"""Image filters shared by the prefills, the nets and the losses."""

from __future__ import annotations

import torch


def lowpass(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) blurred by a Gaussian of `sigma` px (kernel 2 * ceil(3 sigma) + 1 px,
    reflected at the borders; torchvision's gaussian_blur), differentiable."""
    import math

    from torchvision.transforms.functional import gaussian_blur

    # reflection needs the pad under the image's side: at most 2 * side - 1 (odd); a 1 px
    # side leaves a 1 px kernel, the image itself
    size = min(2 * math.ceil(3 * sigma) + 1, 2 * min(image.shape[-2:]) - 1)
    if size <= 1:
        return image
    return gaussian_blur(image, [size, size], [sigma, sigma])
