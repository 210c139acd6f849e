"""The reconstruction terms: what they reward, and that gradients reach the generator."""

from __future__ import annotations

import torch

from gan_dist.objectives import reconstruction, structural_dissimilarity


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
