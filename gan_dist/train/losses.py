"""Adversarial losses (a registry, as BasicSR keeps its losses), their regularisers and the
reconstruction terms.

Every loss is computed in float32 whatever the autocast dtype: logits are cast up first, so
bf16/fp16 training does not round the loss itself.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from gan_dist.core.filters import lowpass

if TYPE_CHECKING:
    from gan_dist.config.family import Family
    from gan_dist.config.recipe import ObjectiveConfig


@dataclass(frozen=True)
class Adversarial:
    """Per-logit terms: `real(x)` is D's loss on a logit that should say real, `fake(x)` on one
    that should say fake, `g(x)` the generator's loss on a repair's logit."""

    real: Callable[[torch.Tensor], torch.Tensor]
    fake: Callable[[torch.Tensor], torch.Tensor]
    g: Callable[[torch.Tensor], torch.Tensor]

    def d(
        self,
        real_logits: torch.Tensor,
        fake_logits: torch.Tensor,
        generated: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """D's loss. `generated`: for each fake logit, the share in [0, 1] of the pixels under
        it that the generator made (see `generated_share`); the rest are known pixels pasted
        back, identical to a real image's, so they are a real target (LaMa's mask-aware
        loss). None: every fake logit is a fake target."""
        fake = self.fake(fake_logits)
        if generated is not None:
            fake = generated * fake + (1 - generated) * self.real(fake_logits)
        return self.real(real_logits).mean() + fake.mean()


def adversarial_for(objective: ObjectiveConfig) -> Adversarial:
    """The recipe's adversarial family (`objective.adversarial`, `config/families.py`) built with
    its settings (`objective.adversarial_settings`); built once, not at every step."""
    return _adversarial(
        objective.adversarial, json.dumps(objective.adversarial_settings, sort_keys=True)
    )


@cache
def _adversarial(name: str, settings: str) -> Adversarial:
    from gan_dist.config.families import registry
    from gan_dist.config.family import PluginError

    family = registry("objective").get(name)
    built = family.run("its builder", family.builder(), family.validate(json.loads(settings)))
    if not isinstance(built, Adversarial):
        kind = type(built).__name__
        raise PluginError(
            f"{family.label}: its builder returned {kind}, not a gan_dist.train.losses.Adversarial"
        )
    return _held_to_contract(family, built) if family.plugin else built


TERMS = ("real", "fake", "g")


def _held_to_contract(family: Family, built: Adversarial) -> Adversarial:
    """A plugin's Adversarial whose every call is checked as it happens: each term must be
    callable, and each call must return a floating-point tensor of its logits' shape (one
    loss per logit) that keeps their graph; what it raises is a PluginError naming the
    family (`Family.run`). A subclass's own `d` is checked likewise (a scalar loss)."""
    from gan_dist.config.family import PluginError

    for name in TERMS:
        term = getattr(built, name)
        if not callable(term):
            raise PluginError(
                f"{family.label}: its Adversarial's {name} is {type(term).__name__}, not a "
                "function of the logits"
            )
    terms = {name: _checked_term(family, name, getattr(built, name)) for name in TERMS}
    checked = family.run("its Adversarial", dataclasses.replace, built, **terms)
    if type(built).d is not Adversarial.d:
        own = checked.d

        def d(*args: Any, **kwargs: Any) -> torch.Tensor:
            loss = family.run("its d", own, *args, **kwargs)
            _check_loss(family, "d", [a for a in args if isinstance(a, torch.Tensor)], loss, ())
            return loss

        object.__setattr__(checked, "d", d)  # the frozen instance's own, not the class's
    return checked


def _checked_term(family: Family, name: str, term: Callable) -> Callable:
    def call(logits: torch.Tensor) -> torch.Tensor:
        loss = family.run(f"its {name}", term, logits)
        _check_loss(family, name, [logits], loss, tuple(logits.shape))
        return loss

    return call


def _check_loss(
    family: Family, name: str, inputs: list[torch.Tensor], loss: Any, shape: tuple[int, ...]
) -> None:
    """`loss` is a floating-point tensor of `shape` (for `d`: a scalar) that, where
    gradients are recorded and its inputs take them, keeps their graph."""
    from gan_dist.config.family import PluginError

    fine = isinstance(loss, torch.Tensor) and loss.is_floating_point()
    if not fine or tuple(loss.shape) != shape:
        got = type(loss).__name__
        if isinstance(loss, torch.Tensor):
            got = f"{_shown(loss.shape)} of {str(loss.dtype).removeprefix('torch.')}"
        if name == "d":
            asked, rule = "", "d must return a floating-point scalar tensor"
        else:
            asked = f" for logits shaped {_shown(shape)}"
            rule = "real, fake and g must return a floating-point tensor of the logits' shape"
        raise PluginError(f"{family.label}: its {name} returned {got}{asked}; {rule}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs) and not loss.requires_grad:
        raise PluginError(
            f"{family.label}: its {name} returned a tensor without gradients for logits "
            "that have them (detached, or made under torch.no_grad); the loss must depend on "
            "the logits"
        )


def non_saturating(settings: Any = None) -> Adversarial:
    """The non-saturating loss (Goodfellow et al. 2014): binary cross-entropy on logits for
    D, -log D(G(z)) for the generator."""
    return Adversarial(
        real=lambda x: F.softplus(-x), fake=lambda x: F.softplus(x), g=lambda x: F.softplus(-x)
    )


def least_squares(settings: Any = None) -> Adversarial:
    """Least squares (Mao et al. 2017)."""
    return Adversarial(
        real=lambda x: 0.5 * (x - 1) ** 2, fake=lambda x: 0.5 * x**2, g=lambda x: 0.5 * (x - 1) ** 2
    )


def hinge(settings: Any = None) -> Adversarial:
    """Hinge (Miyato et al. 2018, with spectral normalisation)."""
    return Adversarial(real=lambda x: F.relu(1 - x), fake=lambda x: F.relu(1 + x), g=lambda x: -x)


def wasserstein(settings: Any = None) -> Adversarial:
    """Wasserstein critic (Gulrajani et al. 2017); the trainer adds the gradient penalty
    (its family is marked `critic`)."""
    return Adversarial(real=lambda x: -x, fake=lambda x: x, g=lambda x: -x)


def _shown(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def generated_share(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The hole share under each logit: mask (N, 1, H, W) in {0, 1} area-averaged to the
    logits' grid (N, 1, h, w) (a PatchGAN's), or to one value per image for a global
    discriminator's (N, 1) logits. Values in [0, 1]."""
    size = logits.shape[-2:] if logits.dim() == 4 else (1, 1)
    return F.adaptive_avg_pool2d(mask.float(), size).reshape(logits.shape)


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018, Which Training Methods for GANs do actually Converge?):
    E[||grad_x D(x)||^2] over real images x, differentiable (create_graph) so D learns from it.
    `real_images` must require grad and have produced `real_logits`. Scale by gamma / 2."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


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
    lowpass_sigma: float = 0.0,
) -> torch.Tensor:
    """L1 over the image, plus an extra L1 averaged over the hole only: with compositing the
    known pixels are exact, and a plain mean would dilute the hole by its coverage.

    `lowpass_sigma` > 0 (px): both terms compare the images' low frequencies only (each
    blurred by a Gaussian of that sigma), leaving the detail to the texture and adversarial
    terms. A pixel loss on the detail pulls it to its conditional median, which for texture
    is a flat smudge; blurred, it still asks for the right colours and shapes (the
    perception-distortion trade-off, Blau and Michaeli 2018, split by frequency)."""
    fake, clean = fake.float(), clean.float()
    if lowpass_sigma:
        fake, clean = lowpass(fake, lowpass_sigma), lowpass(clean, lowpass_sigma)
    diff = (fake - clean).abs()
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

    from gan_dist.core.pixels import to_unit

    fake01, clean01 = to_unit(fake.float()), to_unit(clean.float())
    return 1 - structural_similarity_index_measure(fake01, clean01, data_range=1.0)


def feature_matching(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """pix2pixHD's feature matching: L1 between D's activations on real and repaired."""
    return sum(
        F.l1_loss(f.float(), r.detach().float()) for r, f in zip(real, fake, strict=True)
    ) / len(real)


def texture_swd(
    fake: torch.Tensor,
    clean: torch.Tensor,
    mask: torch.Tensor,
    positions: int = 256,
    projections: int = 32,
) -> torch.Tensor:
    """A texture loss: the sliced Wasserstein distance between the 7x7 patches of the repair
    and of the original around the hole, per image and Laplacian level. The descriptors are
    the hole SWD metric's (train/swd.py, after Karras et al. 2018); training on their
    distribution follows Heitz et al. 2021 (A Sliced Wasserstein Loss for Neural Texture
    Synthesis), on pixel pyramids instead of VGG features, so no weights are needed.

    L1 rewards the smooth median of texture it cannot predict, a flat patch; this term only
    asks that the hole's patches have the original's distribution (its grain), wherever they
    are, so the two together trade a little fidelity for texture. Fresh random directions
    (global RNG) each call; each direction's projections are scaled by their spread in the
    repair and the original together, at least one 8-bit level, so every level counts alike
    and a flat original (a black surround, a clear sky) cannot blow the loss up.

    fake, clean: (B, C, H, W) in [-1, 1], at least 16 px a side; mask (B, 1, H, W), 1 in the
    hole. `positions` (>= 2) patch centres per image are drawn (with replacement) in the
    hole and its RING px, the same centres in both images. Returns a float32 scalar >= 0,
    0 when the patches match; images without a hole add nothing (an all-known batch gives
    0). Raises ValueError for smaller images.
    """
    from gan_dist.metrics.swd import LEVELS, PATCH, RING, laplacian_pyramid

    smallest = 4 * 2 ** (LEVELS - 1)  # the coarsest level must exceed the patch's reach
    if min(fake.shape[-2:]) < smallest:
        raise ValueError(f"texture_swd: images must be at least {smallest} px a side")

    region = F.max_pool2d(mask.float(), 2 * RING + 1, stride=1, padding=RING)
    has_hole = region.flatten(1).amax(1) > 0
    total = fake.new_zeros((), dtype=torch.float32)
    if not has_hole.any():
        return total
    fake, clean, region = fake[has_hole].float(), clean[has_hole].float(), region[has_hole]
    levels = zip(laplacian_pyramid(fake), laplacian_pyramid(clean), strict=True)
    pad = PATCH // 2
    offsets = torch.arange(PATCH, device=fake.device)
    for f, c in levels:
        b, channels, height, width = f.shape
        here = F.adaptive_max_pool2d(region, (height, width)).flatten(1)
        centre = torch.multinomial(here, positions, replacement=True)  # (b, K) in H * W
        # the K patches as flat indices into the padded level: row-major 7x7 around each centre
        rows = (centre // width)[..., None, None] + offsets[:, None]
        cols = (centre % width)[..., None, None] + offsets[None, :]
        index = (rows * (width + 2 * pad) + cols).flatten(1)  # (b, K * 49)
        index = index[:, None, :].expand(-1, channels, -1).repeat(2, 1, 1)
        dirs = torch.randn(channels * PATCH * PATCH, projections, device=f.device)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        both = F.pad(torch.cat([f, c]), (pad,) * 4, mode="reflect").flatten(2)
        patches = both.gather(2, index).view(2 * b, channels, positions, PATCH * PATCH)
        pf, pc = (patches.transpose(1, 2).reshape(2 * b, positions, -1) @ dirs).chunk(2)
        spread = torch.cat([pf, pc], dim=1).detach().std(dim=1, keepdim=True)
        scale = spread.clamp_min(2 / 255)
        gap = (pf / scale).sort(dim=1).values - (pc / scale).sort(dim=1).values
        total = total + gap.pow(2).mean()
    return total / LEVELS
