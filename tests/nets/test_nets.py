"""Nets and the hole prefill: shapes, compositing, and that the fill is a real fill."""

from __future__ import annotations

import pytest
import torch

from gan_dist.config.recipe import load_recipe
from gan_dist.core.prefill import fill_holes
from gan_dist.nets.build import build_discriminator, build_generator
from gan_dist.nets.noise import pixel_noise


def _hole(h: int, w: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    mask = torch.zeros(1, 1, h, w)
    y0, y1, x0, x1 = box
    mask[..., y0:y1, x0:x1] = 1
    return mask


@pytest.mark.parametrize("kind", ["harmonic", "biharmonic"])
def test_fill_keeps_known_pixels_and_reproduces_a_ramp(kind):
    # A linear ramp solves both Laplace's and the biharmonic equation exactly.
    h, w = 48, 40
    ramp = torch.linspace(-1, 1, w).expand(1, 2, h, w).clone()
    ramp[:, 1] *= -0.5
    mask = _hole(h, w, (10, 38, 8, 30))
    damaged = ramp * (1 - mask) - mask  # holes arrive black, as packed
    filled = fill_holes(damaged, 1 - mask, kind)
    known = (1 - mask).expand_as(filled) > 0
    assert torch.equal(filled[known], ramp[known])
    assert (filled - ramp).abs().max() < 0.05
    # the black hole content did not leak in: a zero-filled guess would be off by ~1
    assert (filled - ramp)[~known].abs().mean() < 0.02


def test_biharmonic_fill_carries_curvature_that_harmonic_flattens():
    h, w = 64, 64
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    bowl = (xx**2 + yy**2 - 1).expand(1, 1, h, w)  # biharmonic, not harmonic
    mask = _hole(h, w, (16, 48, 16, 48))
    hole = mask > 0
    errors = {
        kind: (fill_holes(bowl * (1 - mask), 1 - mask, kind) - bowl)[hole].abs().mean()
        for kind in ("harmonic", "biharmonic")
    }
    assert errors["biharmonic"] < 0.6 * errors["harmonic"], errors


def test_fill_of_odd_sizes_and_empty_images_is_finite():
    img = torch.rand(3, 1, 37, 23)
    nothing_known = torch.zeros(3, 1, 37, 23)
    assert torch.equal(fill_holes(img, nothing_known), torch.zeros_like(img))
    one_known = nothing_known.clone()
    one_known[..., 5, 7] = 1
    filled = fill_holes(img, one_known)
    assert torch.allclose(filled, img[..., 5:6, 7:8].expand_as(img), atol=1e-5)


def _plain_fill(image: torch.Tensor, known: torch.Tensor, kind: str) -> torch.Tensor:
    """The prefill's formulas written out plainly, a new tensor per operation: the in-place
    stencil must give the very same bits (the quality figures were measured with these)."""
    import torch.nn.functional as F

    from gan_dist.core import prefill as P

    def mean4(u):
        p = F.pad(u, (1, 1, 1, 1), mode="replicate")
        return (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4

    def lap(u):
        return 4 * (mean4(u) - u)

    x, w = image * known, known
    pyramid = [(x, w)]
    while max(x.shape[-2:]) > 1:
        x, w = F.avg_pool2d(x, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)
        pyramid.append((x, w))
    fill = x / w.clamp_min(1e-8)
    for x, w in reversed(pyramid[:-1]):
        mean, free = x / w.clamp_min(1e-8), (w == 0).float()
        coarse = F.interpolate(fill, size=x.shape[-2:], mode="bilinear", align_corners=False)
        fill = mean * (1 - free) + coarse * free
        for _ in range(P.HARMONIC_STEPS):
            fill = fill + free * (mean4(fill) - fill)
        if kind == "biharmonic":
            step, previous = free * P.BIHARMONIC_DAMPING, fill
            for _ in range(P.BIHARMONIC_STEPS):
                fill, previous = (
                    fill - step * lap(lap(fill)) + P.BIHARMONIC_MOMENTUM * (fill - previous),
                    fill,
                )
    return fill.clamp(-1, 1)  # a pixel value, whatever the biharmonic overshoot


@pytest.mark.parametrize("kind", ["harmonic", "biharmonic"])
def test_in_place_fill_is_bit_identical_to_the_plain_formulas(kind):
    g = torch.Generator().manual_seed(3)
    img = torch.rand(2, 3, 45, 70, generator=g) * 2 - 1
    mask = (torch.rand(2, 1, 45, 70, generator=g) > 0.6).float()
    mask[..., 10:30, 20:50] = 1
    assert torch.equal(fill_holes(img, 1 - mask, kind), _plain_fill(img, 1 - mask, kind))


def test_fill_inside_bf16_autocast_stays_fp32_and_keeps_the_layout():
    """A bf16 generator's forward calls the prefill under autocast with channels_last
    inputs: it must still solve in fp32 (same bits) and hand back the input's layout."""
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    known = (torch.rand(2, 1, 32, 32) > 0.3).float()
    plain = fill_holes(img, known)
    cl = img.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        filled = fill_holes(cl, known.contiguous(memory_format=torch.channels_last))
    assert filled.dtype == torch.float32
    assert filled.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(filled, plain)


def test_untrained_generator_returns_the_classical_fill():
    r = load_recipe("quickstart", ["data.image_size=32", "model.generator.base_channels=4"])
    assert r.model.prefill == "biharmonic"
    G = build_generator(r.model, 3, 32).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    m = _hole(32, 32, (4, 20, 6, 26)).expand(2, 1, 32, 32)
    with torch.no_grad():
        start = fill_holes(x, 1 - m, "biharmonic").clamp(-1, 1)  # biharmonic can overshoot
        assert torch.allclose(G(x, m), start, atol=1e-6)
    none = load_recipe("quickstart", ["data.image_size=32", "model.prefill=none"])
    G = build_generator(none.model, 3, 32).eval()
    with torch.no_grad():
        assert not torch.allclose(G(x, m), fill_holes(x, 1 - m, "biharmonic"), atol=1e-3)


@pytest.mark.parametrize("name", ["quickstart", "medical", "photo", "dcgan", "sngan", "wgan-gp"])
def test_recipe_nets_build_for_every_builtin(name):
    r = load_recipe(
        name,
        [
            "data.image_size=32",
            "model.generator.base_channels=4",
            "model.discriminator.base_channels=4",
        ],
    )
    G = build_generator(r.model, r.data.channels, 32)
    D = build_discriminator(r.model.discriminator, r.data.channels, 32)
    x = torch.rand(2, r.data.channels, 32, 32) * 2 - 1
    m = (torch.rand(2, 1, 32, 32) > 0.5).float()
    y = G(x, m)
    assert y.shape == x.shape and y.abs().max() <= 1
    if r.model.composite:
        assert torch.equal(y[m.expand_as(y) == 0], x[m.expand_as(x) == 0])
    y.mean().backward()  # the net can learn: some weight gets a non-zero gradient
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    assert D(torch.cat([x, m, y.detach()], 1)).shape[:2] == (2, 1)
    has_sn = any("parametrizations" in k for k in D.state_dict())
    assert has_sn == r.model.discriminator.spectral_norm


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.generator.name=ffc_resnet", "model.generator.blocks=2"],
        ["model.generator.name=ffc_resnet", "model.generator.depth=2", "model.prefill=none"],
        ["model.generator.gated=true"],
        ["model.generator.gated=true", "model.generator.norm=none", "model.prefill=none"],
        ["model.noise=true"],
        ["model.noise=true", "model.generator.name=ffc_resnet", "model.generator.blocks=2"],
    ],
)
def test_new_generators_shapes_range_composite_and_gradients(overrides):
    r = load_recipe(
        "quickstart", ["data.image_size=32", "model.generator.base_channels=4", *overrides]
    )
    G = build_generator(r.model, 3, 32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    m = _hole(32, 32, (8, 24, 4, 28)).expand(2, 1, 32, 32)
    y = G(x, m)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert torch.equal(y[m.expand_as(y) == 0], x[m.expand_as(x) == 0])
    y[m.expand_as(y) > 0].square().mean().backward()
    # every parameter learns, the Fourier branch and the gates included
    dead = [n for n, p in G.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead or (r.model.prefill != "none" and all("body" in n for n in dead))


def test_ffc_sees_the_whole_image_from_its_first_block():
    """A LaMa FFC block: an output pixel depends on input pixels far outside any 3x3 stack's
    reach (the whole map, through the FFT); the same block without a global branch does not."""
    from gan_dist.nets.ffc import FFC, FFCBlock

    torch.manual_seed(0)

    def reach(net, split: bool) -> float:
        x = torch.rand(1, 8, 32, 32, dtype=torch.float64, requires_grad=True)
        out_l, out_g = net((x[:, :4], x[:, 4:]) if split else (x, None))
        corner = out_l[0, :, 0, 0].sum() + (0 if out_g is None else out_g[0, :, 0, 0].sum())
        corner.backward()
        return x.grad[0, :, 16:, 16:].abs().sum().item()  # 16+ px away: 3x3 convs reach 2

    assert reach(FFCBlock(8, 0.5, "none").double(), split=True) > 0
    assert reach(FFC(8, 8, 0.0, 0.0, "none").double(), split=False) == 0


def test_ffc_under_bf16_autocast_runs_its_fft_in_float32():
    from gan_dist.nets.ffc import FourierUnit

    unit = FourierUnit(4, 4, "batch")
    x = torch.rand(2, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = unit(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.shape == x.shape and torch.isfinite(y).all()


def test_gated_unet_gate_is_a_soft_mask_on_features():
    from gan_dist.nets.unet import Gate

    gate = Gate(torch.nn.Identity(), torch.nn.ReLU())
    feature = torch.tensor([[[[2.0]]], [[[-1.0]]]]).reshape(1, 2, 1, 1)
    closed = torch.cat([feature[:, :1], torch.full((1, 1, 1, 1), -30.0)], 1)
    opened = torch.cat([feature[:, :1], torch.full((1, 1, 1, 1), 30.0)], 1)
    assert gate(closed).item() == pytest.approx(0.0, abs=1e-6)
    assert gate(opened).item() == pytest.approx(2.0)


def test_gated_and_ffc_options_are_refused_where_they_mean_nothing():
    from gan_dist.core.errors import RecipeError

    with pytest.raises(RecipeError, match="model.generator.gated: unknown key; resnet takes"):
        load_recipe("quickstart", ["model.generator.name=resnet", "model.generator.gated=true"])
    with pytest.raises(RecipeError, match="model.generator.global_ratio: unknown key; unet"):
        load_recipe("quickstart", ["model.generator.global_ratio=0.5"])
    with pytest.raises(RecipeError, match="model.generator.global_ratio: Input should be less"):
        load_recipe(
            "quickstart", ["model.generator.name=ffc_resnet", "model.generator.global_ratio=1.0"]
        )


def test_position_noise_is_standard_normal_white_and_the_same_for_a_tile_as_for_the_image():
    z = pixel_noise(1, 256, 256)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    for shift in ((0, 1), (1, 0), (1, 1)):  # neighbours uncorrelated
        a = z[..., shift[0] :, shift[1] :]
        b = z[..., : 256 - shift[0], : 256 - shift[1]]
        assert abs((a * b).mean()) < 0.02
    tiles = pixel_noise(2, 64, 48, torch.tensor([[100, 30], [7, 190]]))
    assert torch.equal(tiles[0, 0], z[0, 0, 100:164, 30:78])
    assert torch.equal(tiles[1, 0], z[0, 0, 7:71, 190:238])
    assert not torch.equal(pixel_noise(1, 8, 8, seed=1), pixel_noise(1, 8, 8))
    for bad in (torch.zeros(1, 2, dtype=torch.int64), torch.zeros(2, 2)):  # one corner, floats
        with pytest.raises(ValueError, match=r"origins must be \(2, 2\) integers"):
            pixel_noise(2, 8, 8, bad)


def test_noise_generator_is_fresh_in_training_and_drawn_by_position_at_inference():
    r = load_recipe(
        "quickstart", ["data.image_size=32", "model.generator.base_channels=4", "model.noise=true"]
    )
    torch.manual_seed(0)
    G = build_generator(r.model, 3, 32)
    with torch.no_grad():  # an untrained correction is zero: let the noise through
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    seen = []
    G.body.register_forward_pre_hook(lambda _, args: seen.append(args[0][:, -1:].clone()))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    m = _hole(32, 32, (8, 24, 4, 28))
    known = m.expand_as(x) == 0
    a, b = G(x, m), G(x, m)
    assert not torch.equal(a, b) and torch.equal(a[known], b[known])
    assert torch.equal(seen[-1] * (1 - m), torch.zeros_like(m))  # noise only in the hole
    G.eval()
    with torch.no_grad():
        a, b = G(x, m), G(x, m)
        assert torch.equal(a, b)
        whole = pixel_noise(1, 96, 96)
        G(x, m, origins=torch.tensor([[40, 56]]))
        assert torch.equal(seen[-1], whole[..., 40:72, 56:88] * m)
