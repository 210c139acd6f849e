"""The reconstruction terms: what they reward, and that gradients reach the generator."""

from __future__ import annotations

import pytest
import torch

from gan_dist.train.losses import reconstruction, structural_dissimilarity, texture_swd


def _images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:16, 8:24] = 1
    return clean, mask


def test_hole_weight_is_not_diluted_by_the_hole_coverage():
    clean, mask = _images()
    fake = clean + 0.5 * mask  # wrong only inside the hole, by 0.5
    assert torch.isclose(reconstruction(fake, clean, mask, 0.0, 1.0), torch.tensor(0.5))
    coverage = mask.mean()
    assert torch.isclose(reconstruction(fake, clean, mask, 1.0, 0.0), 0.5 * coverage)


def test_structural_dissimilarity_is_zero_for_the_clean_image_and_grows_with_damage():
    clean, mask = _images()
    assert structural_dissimilarity(clean, clean).abs() < 1e-5
    flat = clean * (1 - mask)  # the hole's structure flattened to mid-grey
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    noisy = clean + 0.3 * mask * noise
    assert 0 < structural_dissimilarity(noisy, clean) < 1
    assert structural_dissimilarity(flat, clean) > 0


def test_structural_dissimilarity_sends_gradient_to_the_hole():
    clean, mask = _images()
    fake = (clean * (1 - mask)).requires_grad_(True)
    structural_dissimilarity(fake, clean).backward()
    inside = fake.grad.abs()[mask.expand_as(fake) > 0]
    assert inside.sum() > 0 and torch.isfinite(fake.grad).all()


def _grain(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A grainy texture (white noise on a gradient) with a 24x28 px hole in each image."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.5, 0.5, 48).expand(2, 3, 48, 48)
    clean = ramp + 0.2 * torch.randn(2, 3, 48, 48, generator=g)
    mask = torch.zeros(2, 1, 48, 48)
    mask[:, :, 12:36, 10:38] = 1
    return clean, mask


def test_texture_loss_is_zero_on_the_original_and_on_a_batch_without_holes():
    clean, mask = _grain()
    assert texture_swd(clean, clean, mask) == 0
    flat = clean * (1 - mask) + mask * clean.mean()
    assert texture_swd(flat, clean, torch.zeros_like(mask)) == 0


def test_texture_loss_stays_bounded_when_the_original_is_flat():
    """Grain in a hole of a flat original (a black surround, a clear sky) is wrong, but by
    as much as a flat patch in grain, not by thousands: the scale of each direction is the
    spread of both images, at least one 8-bit level (it was the original's alone, 1e-4 at
    least, and 0.1 of noise scored 168,605)."""
    clean, mask = torch.zeros(2, 3, 48, 48), torch.zeros(2, 1, 48, 48)
    mask[:, :, 12:36, 10:38] = 1
    g = torch.Generator().manual_seed(0)
    for std in (1 / 255, 0.01, 0.1, 0.5):
        noisy = clean + std * mask * torch.randn(clean.shape, generator=g)
        torch.manual_seed(0)
        assert 0 < texture_swd(noisy, clean, mask) < 3
    with pytest.raises(ValueError, match="at least 16 px"):
        texture_swd(clean[..., :12, :12], clean[..., :12, :12], mask[..., :12, :12])


def test_texture_loss_scores_a_flat_hole_far_above_the_same_grain_elsewhere():
    """Grain of the same statistics but other values (another noise draw) is the texture the
    loss asks for: it scores near 0, a flat patch far above, whatever their L1 says."""
    clean, mask = _grain(0)
    other, _ = _grain(1)
    flat = clean * (1 - mask) + mask * clean.mean()
    regrained = clean * (1 - mask) + mask * other
    torch.manual_seed(0)
    flat_loss, grain_loss = texture_swd(flat, clean, mask), texture_swd(regrained, clean, mask)
    assert grain_loss < 0.2 * flat_loss
    # L1 prefers the flat patch: the reason the texture term exists
    assert reconstruction(flat, clean, mask, 0, 1) < reconstruction(regrained, clean, mask, 0, 1)


def test_a_low_pass_l1_leaves_grain_free_and_still_asks_for_the_colour():
    """Issue 25: a plain L1 prefers a flat patch to grain of the right statistics; on the
    low frequencies the two cost about the same, while a wrong colour still costs."""
    import torch

    clean, mask = _grain(0)
    other, _ = _grain(1)
    flat = clean * (1 - mask) + mask * clean.mean()
    regrained = clean * (1 - mask) + mask * other
    darker = clean * (1 - mask) + mask * (other - 0.3)
    plain = [reconstruction(x, clean, mask, 0, 1) for x in (flat, regrained)]
    low = [reconstruction(x, clean, mask, 0, 1, lowpass_sigma=2.0) for x in (flat, regrained)]
    assert plain[0] < plain[1]
    assert low[1] < 1.3 * low[0] and low[1] < 0.5 * plain[1]
    assert reconstruction(darker, clean, mask, 0, 1, lowpass_sigma=2.0) > 3 * low[1]
    x = regrained.clone().requires_grad_(True)
    reconstruction(x, clean, mask, 1, 1, lowpass_sigma=2.0).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    tiny = torch.zeros(1, 3, 4, 4)  # a kernel wider than the image is cut to fit
    assert torch.isclose(
        reconstruction(tiny, tiny + 1, torch.ones(1, 1, 4, 4), 1, 0, 8.0), torch.tensor(1.0)
    )


def test_texture_loss_gradient_brings_back_the_grain_of_a_flat_hole():
    clean, mask = _grain()
    hole = mask.expand_as(clean) > 0
    x = (clean * (1 - mask) + mask * clean.mean()).requires_grad_(True)
    torch.manual_seed(0)
    loss = texture_swd(x, clean, mask)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad[hole].abs().sum() > 0
    optimiser = torch.optim.Adam([x], lr=0.02)
    for _ in range(150):
        optimiser.zero_grad()
        texture_swd(x, clean, mask).backward()
        optimiser.step()
    assert texture_swd(x, clean, mask) < 0.2 * loss
    # pixel to pixel differences (the grain) back to the original's within 25%
    fine = (x - torch.roll(x, 1, dims=-1))[hole].std()
    assert 0.75 < fine / (clean - torch.roll(clean, 1, dims=-1))[hole].std() < 1.25


def test_adversarial_terms_and_the_mask_aware_target():
    from gan_dist.train.losses import generated_share, hinge, non_saturating

    bce = non_saturating()
    zero = torch.zeros(2, 1, 4, 4)
    log2 = torch.log(torch.tensor(2.0))
    assert torch.allclose(bce.d(zero, zero), 2 * log2)
    # the non-saturating generator loss: -log sigmoid(f)
    assert torch.allclose(
        bce.g(torch.tensor([0.0, 3.0])), torch.nn.functional.softplus(-torch.tensor([0.0, 3.0]))
    )
    # mask-aware: a repair whose logits all say "real" is penalised only where generated
    real, fake = torch.full((1, 1, 2, 2), 5.0), torch.full((1, 1, 2, 2), 5.0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :4] = 1  # one logit's quarter of the image is generated
    share = generated_share(mask, fake)
    assert share.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    hinge_loss = hinge()
    plain, aware = hinge_loss.d(real, fake), hinge_loss.d(real, fake, share)
    assert plain.item() == pytest.approx(6.0)  # relu(1 + 5) on every fake logit
    assert aware.item() == pytest.approx(6.0 / 4)  # only on the generated one
    # one logit per image (a global discriminator): the hole share of the whole image
    assert generated_share(mask, torch.zeros(1, 1)).item() == pytest.approx(16 / 64)


def test_r1_penalty_on_a_toy_discriminator_is_its_squared_gradient_norm():
    """D(x) = <w, x> + x0^2 has grad w + 2 x0 e0: R1 = mean over images of ||grad||^2, and it
    is differentiable in w (D learns from it)."""
    from gan_dist.train.losses import r1_penalty

    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    x = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]], requires_grad=True)
    logits = x @ w + x[:, 0] ** 2
    penalty = r1_penalty(logits, x)
    # image 1: grad (1, -2, .5) -> 5.25; image 2: grad (3, -2, .5) -> 13.25
    assert penalty.item() == pytest.approx((5.25 + 13.25) / 2)
    penalty.backward()
    # d/dw of mean ||w + 2 x0 e0||^2 = mean 2 (w + 2 x0 e0)
    assert torch.allclose(w.grad, torch.tensor([4.0, -4.0, 1.0]))
