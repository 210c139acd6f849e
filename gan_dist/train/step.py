"""One training step: a discriminator update, then (every `objective.n_critic` steps) a
generator update, each readable on its own (nanoGPT's step; LaMa splits its losses into
`generator_loss` and `discriminator_loss` the same way). The generator's optional loss
terms are one table, `GENERATOR_TERMS`: a term with weight 0 costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from gan_dist.train.losses import (
    adversarial_for,
    feature_matching,
    generated_share,
    gradient_penalty,
    r1_penalty,
    reconstruction,
    structural_dissimilarity,
    texture_swd,
)

if TYPE_CHECKING:
    from gan_dist.config.recipe import ObjectiveConfig
    from gan_dist.data.stream import Batch


@dataclass
class Nets:
    """What a step updates: the generator and discriminator (as Accelerate prepared them)
    and their optimisers."""

    G: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


@dataclass
class Judged:
    """What the generator's loss terms read: the repair `fake` and the `clean` image
    (B, C, H, W) in [-1, 1], the `mask` (B, 1, H, W) in {0, 1} (1 = hole), and D's
    activations on the clean (`real_feats`, from the discriminator step) and on the repair
    (`fake_feats`)."""

    fake: torch.Tensor
    clean: torch.Tensor
    mask: torch.Tensor
    real_feats: list[torch.Tensor]
    fake_feats: list[torch.Tensor]


@dataclass(frozen=True)
class Term:
    """A generator loss term beside the adversarial and reconstruction ones: logged as
    `name`, weighed by the objective setting `weight`."""

    name: str
    weight: str
    loss: Callable[[Judged], torch.Tensor]


GENERATOR_TERMS = (
    # pix2pixHD's feature matching: D's activations on the repair near those on the clean
    Term("g_fm", "feature_matching_weight", lambda j: feature_matching(j.real_feats, j.fake_feats)),
    # 1 - SSIM (Zhao et al. 2017): local contrast and structure, which L1 does not reward
    Term("g_ssim", "ssim_weight", lambda j: structural_dissimilarity(j.fake, j.clean)),
    # sliced Wasserstein distance of hole patches: texture statistics, not pixels
    Term("g_texture", "texture_weight", lambda j: texture_swd(j.fake, j.clean, j.mask)),
)


def train_step(
    batch: Batch,
    nets: Nets,
    objective: ObjectiveConfig,
    accelerator,
    *,
    update_g: bool,
    r1_due: bool = False,
    grad_clip: float | None = None,
    channels_last: bool = False,
) -> dict[str, torch.Tensor]:
    """One batch (damaged, clean, mask: (B, C, H, W) in [-1, 1], mask (B, 1, H, W); `start`,
    the stored prefill, where the stream has one): the repair, a discriminator update, then a
    generator update when `update_g`. `r1_due`: add the lazy R1 penalty to this
    discriminator step (objective.r1_weight). `grad_clip`: the largest gradient norm, None
    for no clipping. Returns the losses by name, detached (d_* and, when updated, g_*)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    damaged, clean, mask, start = (
        batch[k].to(accelerator.device, non_blocking=True).contiguous(memory_format=fmt)
        if k in batch
        else None
        for k in ("damaged", "clean", "mask", "start")
    )
    with accelerator.accumulate(nets.G, nets.D):
        # the repair; kept in the graph only when the generator learns from it this step
        with torch.set_grad_enabled(update_g), accelerator.autocast():
            fake = nets.G(damaged, mask, start)
        losses, real_feats = discriminator_step(
            damaged, clean, mask, fake, nets, objective, accelerator, r1_due, grad_clip
        )
        if update_g:
            losses |= generator_step(
                damaged, clean, mask, fake, real_feats, nets, objective, accelerator, grad_clip
            )
    return losses


def discriminator_step(
    damaged, clean, mask, fake, nets: Nets, objective: ObjectiveConfig, accelerator, r1_due,
    grad_clip,
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """D's update: real and repaired pairs in one forward (one DDP forward per backward, and
    batch-norm statistics over both), plus interpolates for WGAN-GP (Gulrajani et al. 2017)
    and, when due, R1 on the real images (Mescheder et al. 2018). Returns its losses and
    D's activations on the real pairs (for feature matching)."""
    obj, D = objective, nets.D
    losses: dict[str, torch.Tensor] = {}
    r1 = bool(obj.r1_weight) and r1_due
    judged = clean.detach().requires_grad_(True) if r1 else clean
    real_in = torch.cat([damaged, mask, judged], dim=1)
    fake_in = torch.cat([damaged, mask, fake.detach()], dim=1)
    parts = [real_in, fake_in]
    if obj.critic:
        eps = torch.rand(len(real_in), 1, 1, 1, device=real_in.device)
        interp = (eps * real_in + (1 - eps) * fake_in).requires_grad_(True)
        parts.append(interp)
    with accelerator.autocast():
        logits, feats = D(torch.cat(parts), features=True)
    chunks = logits.float().chunk(len(parts))
    real_logits, fake_logits = chunks[0], chunks[1]
    generated = generated_share(mask, fake_logits) if obj.mask_aware else None
    loss_d = adversarial_for(obj).d(real_logits, fake_logits, generated)
    losses["d_adv"] = loss_d.detach()
    if r1:  # lazy regularisation: every r1_every steps, as many times the weight
        penalty = r1_penalty(real_logits, judged)
        loss_d = loss_d + 0.5 * obj.r1_weight * obj.r1_every * penalty
        losses["d_r1"] = penalty.detach()
    if obj.critic:
        gp = gradient_penalty(chunks[2], interp)
        loss_d = loss_d + obj.gp_weight * gp
        losses["d_gp"] = gp.detach()
    accelerator.backward(loss_d)
    if grad_clip and accelerator.sync_gradients:
        accelerator.clip_grad_norm_(D.parameters(), grad_clip)
    nets.opt_d.step()
    nets.opt_d.zero_grad(set_to_none=True)
    losses["d_real"] = real_logits.detach().mean()
    losses["d_fake"] = fake_logits.detach().mean()
    losses["d_loss"] = loss_d.detach()
    return losses, [f.chunk(len(parts))[0] for f in feats]


def generator_step(
    damaged, clean, mask, fake, real_feats, nets: Nets, objective: ObjectiveConfig, accelerator,
    grad_clip,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """G's update: fool the (frozen) discriminator and stay close to the clean image
    (reconstruction: L1 over the image and the hole), plus the weighted GENERATOR_TERMS.
    Returns its losses."""
    obj = objective
    plain_d = accelerator.unwrap_model(nets.D)
    plain_d.requires_grad_(False)
    with accelerator.autocast():
        g_logits, g_feats = plain_d(torch.cat([damaged, mask, fake], dim=1), features=True)
    g_adv = adversarial_for(obj).g(g_logits.float()).mean()
    g_rec = reconstruction(
        fake, clean, mask, obj.l1_weight, obj.hole_l1_weight, obj.l1_lowpass_sigma
    )
    loss_g = obj.adversarial_weight * g_adv + g_rec
    losses = {"g_adv": g_adv.detach(), "g_rec": g_rec.detach()}
    judged = Judged(fake, clean, mask, real_feats, g_feats)
    for term in GENERATOR_TERMS:
        weight = getattr(obj, term.weight)
        if weight:
            value = term.loss(judged)
            loss_g = loss_g + weight * value
            losses[term.name] = value.detach()
    accelerator.backward(loss_g)
    plain_d.requires_grad_(True)
    if grad_clip and accelerator.sync_gradients:
        accelerator.clip_grad_norm_(nets.G.parameters(), grad_clip)
    nets.opt_g.step()
    nets.opt_g.zero_grad(set_to_none=True)
    return losses
