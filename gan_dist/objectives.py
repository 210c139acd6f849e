"""Adversarial losses (a registry, as BasicSR keeps its losses) and the reconstruction terms.

Every loss is computed in float32 whatever the autocast dtype: logits are cast up first, so
bf16/fp16 training does not round the loss itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Adversarial:
    """d(real_logits, fake_logits) -> D loss; g(fake_logits) -> G loss."""

    d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g: Callable[[torch.Tensor], torch.Tensor]


ADVERSARIAL: dict[str, Adversarial] = {
    # DCGAN: binary cross-entropy on logits; the generator uses the non-saturating form
    "bce": Adversarial(
        d=lambda r, f: F.softplus(-r).mean() + F.softplus(f).mean(),
        g=lambda f: F.softplus(-f).mean(),
    ),
    # least squares (Mao et al. 2017)
    "lsgan": Adversarial(
        d=lambda r, f: 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean(),
        g=lambda f: 0.5 * ((f - 1) ** 2).mean(),
    ),
    # hinge (Miyato et al. 2018, with spectral normalisation)
    "hinge": Adversarial(
        d=lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(),
        g=lambda f: -f.mean(),
    ),
    # Wasserstein critic (Gulrajani et al. 2017); the gradient penalty is added by the trainer
    "wgan-gp": Adversarial(d=lambda r, f: f.mean() - r.mean(), g=lambda f: -f.mean()),
}


def gradient_penalty(critic_out: torch.Tensor, interpolates: torch.Tensor) -> torch.Tensor:
    """(||grad_x D(x)||_2 - 1)^2 on real/fake interpolates, kept differentiable."""
    (grad,) = torch.autograd.grad(critic_out.float().sum(), interpolates, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def reconstruction(
    fake: torch.Tensor,
    clean: torch.Tensor,
    mask: torch.Tensor,
    weight: float,
    hole_weight: float,
) -> torch.Tensor:
    """L1 over the image, plus an extra L1 averaged over the hole only: with compositing the
    known pixels are exact, and a plain mean would dilute the hole by its coverage."""
    diff = (fake.float() - clean.float()).abs()
    loss = weight * diff.mean()
    if hole_weight:
        hole = mask.expand_as(diff)
        loss = loss + hole_weight * (diff * hole).sum() / hole.sum().clamp(min=1)
    return loss


def structural_dissimilarity(fake: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """1 - SSIM (the validation's SSIM, on [0, 1] images). L1 rewards the right mean in the
    hole but not local contrast and structure; adding this term is the remedy of Zhao et al.
    2017 (Loss Functions for Image Restoration with Neural Networks)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    fake01, clean01 = (fake.float() + 1) / 2, (clean.float() + 1) / 2
    return 1 - structural_similarity_index_measure(fake01, clean01, data_range=1.0)


def feature_matching(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """pix2pixHD's feature matching: L1 between D's activations on real and repaired."""
    return sum(
        F.l1_loss(f.float(), r.detach().float()) for r, f in zip(real, fake, strict=True)
    ) / len(real)
