"""The exemplar fill (`model.prefill: patchmatch`, issue 25): known pixels kept exactly, the
same fill for the same input, texture where a smooth fill makes a smudge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gan_dist.core.exemplar import patchmatch_fill
from gan_dist.core.prefill import fill_holes


def photo(channels: int = 3, size: int = 96) -> torch.Tensor:
    """A real textured crop (scikit-image's grass) in [-1, 1], (1, C, size, size)."""
    from skimage import data

    grass = data.grass()[:size, :size].astype(np.float32) / 127.5 - 1
    image = torch.from_numpy(grass)[None, None]
    return image.repeat(1, channels, 1, 1) if channels == 3 else image


def box(size: int = 96, top: int = 30, height: int = 36) -> torch.Tensor:
    known = torch.ones(1, 1, size, size)
    known[..., top : top + height, top : top + height] = 0
    return known


@pytest.mark.parametrize("channels", [1, 3])
def test_known_pixels_are_kept_exactly_and_holes_filled_from_the_image(channels):
    image = photo(channels) + 1e-4  # values off the 8-bit grid survive outside the hole
    known = box()
    filled = patchmatch_fill(image, known)
    assert filled.shape == image.shape and filled.dtype == image.dtype
    assert torch.equal(filled * known, image * known)
    hole = filled[..., 30:66, 30:66]
    assert hole.min() >= -1 and hole.max() <= 1
    assert not torch.equal(hole, image[..., 30:66, 30:66])
    # every hole value is one the image's known part holds (a copy, not a blend)
    levels = set(((image * known + 1) * 127.5).round().flatten().tolist())
    assert set(((hole + 1) * 127.5).round().flatten().tolist()) <= levels | {0.0}


def test_the_same_input_gets_the_same_fill_in_any_batch():
    image, known = photo(), box()
    first = patchmatch_fill(image, known)
    assert torch.equal(patchmatch_fill(image, known), first)
    batch = patchmatch_fill(torch.cat([photo(), image]), torch.cat([box(top=10), known]))
    assert torch.equal(batch[1:], first)


def test_texture_where_a_smooth_fill_makes_a_smudge():
    """The hole's high-frequency energy: the grass has it, the biharmonic fill has almost
    none, the exemplar fill has about the photograph's."""
    image, known = photo(1), box()

    def grain(x: torch.Tensor) -> float:
        hole = x[..., 32:64, 32:64]
        return float((hole[..., 1:, :] - hole[..., :-1, :]).abs().mean())

    truth = grain(image)
    assert grain(fill_holes(image, known, "biharmonic")) < 0.2 * truth
    assert 0.6 * truth < grain(fill_holes(image, known, "patchmatch")) < 1.5 * truth


def test_nothing_known_is_mid_grey_and_nothing_missing_is_the_image():
    image = photo()
    assert torch.equal(patchmatch_fill(image, torch.ones(1, 1, 96, 96)), image)
    assert torch.equal(patchmatch_fill(image, torch.zeros(1, 1, 96, 96)), torch.zeros_like(image))
    two = torch.cat([photo(), photo()])
    known = torch.cat([torch.ones(1, 1, 96, 96), box()])
    filled = patchmatch_fill(two, known)
    assert torch.equal(filled[0], two[0]) and not torch.equal(filled[1], two[1])


def test_other_channel_counts_are_refused():
    with pytest.raises(ValueError, match="1 or 3 channels, not 2"):
        patchmatch_fill(torch.zeros(1, 2, 8, 8), torch.zeros(1, 1, 8, 8))


def test_a_bf16_batch_keeps_its_dtype():
    image = photo().bfloat16()
    filled = fill_holes(image, box(), "patchmatch")
    assert filled.dtype == torch.bfloat16 and torch.equal(filled * box(), image * box())


@pytest.mark.parametrize("kind", ["biharmonic", "patchmatch", "patchmatch+biharmonic"])
def test_the_pack_solves_prefills_once_and_the_stream_takes_them(packed, kind):
    """Solved between steps, the smooth prefill was most of quickstart's data wait, and an
    exemplar fill costs far more: a packed sample carries both, and training batches take
    them instead of solving them again, equal to solving them (16-bit precision)."""
    from gan_dist.data.stream import StreamConfig, make_stream

    def batches(prefill: str, stored: bool) -> list[dict]:
        stream = make_stream(
            str(packed),
            StreamConfig(4, 3, train=False, prefill=prefill),
            split="val",
        )
        try:
            if not stored:  # the same samples, without their packed prefills
                import gan_dist.data.stream as module

                original = module._Decode._packed_start
                module._Decode._packed_start = lambda *a: None
                try:
                    return list(stream)
                finally:
                    module._Decode._packed_start = original
            return list(stream)
        finally:
            stream.close()

    packed_batches, solved = batches(kind, True), batches(kind, False)
    for got, want in zip(packed_batches, solved, strict=True):
        assert torch.equal(got["damaged"], want["damaged"])
        keep = 1 - got["mask"]
        parts = got["start"].shape[1] // got["damaged"].shape[1]
        damaged = got["damaged"].repeat(1, parts, 1, 1)
        assert torch.equal(got["start"] * keep, damaged * keep)  # known pixels exact
        assert (got["start"] - want["start"]).abs().max() <= 1.5 / 65535
    assert len(packed_batches) > 0


def test_a_pack_keeps_the_prefills_of_holes_only(tmp_path):
    from gan_dist.data.pack import packed_prefills

    damaged = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    no_hole = np.zeros((16, 16, 1), np.uint8)
    assert packed_prefills([damaged], [no_hole], ("biharmonic", "patchmatch")) == [{}]
    hole = no_hole.copy()
    hole[4:9, 4:9] = 255
    first, fills = packed_prefills([damaged, damaged], [no_hole, hole], ("patchmatch",))
    assert first == {} and list(fills) == ["patchmatch"]
    assert fills["patchmatch"].dtype == np.uint16
    known = hole[:, :, 0] == 0
    assert not fills["patchmatch"][known].any()  # the stream takes these from the crop
    assert (fills["patchmatch"][~known] % 257 == 0).all()  # 8-bit copies, exactly


def test_an_exemplar_fill_beside_a_smooth_one_is_corrected_and_seen():
    """`patchmatch+biharmonic`: the generator corrects the smooth fill plus the exemplar's
    detail, and sees the smooth fill as 3 more input channels; untrained
    (a zero correction) it returns that blend, and the smooth fill changes its output once
    it is trained."""
    from gan_dist.config.recipe import load_recipe
    from gan_dist.core.filters import lowpass
    from gan_dist.nets.build import build_generator
    from gan_dist.nets.repair_net import prefill_only

    image, known = photo(), box()
    both = fill_holes(image, known, "patchmatch+biharmonic")
    assert both.shape == (1, 6, 96, 96)
    copy, smooth = fill_holes(image, known, "patchmatch"), fill_holes(image, known, "biharmonic")
    assert torch.equal(both[:, 3:], smooth)
    assert torch.equal(both[:, :3] * known, image * known)  # known pixels kept
    blend = smooth + copy - lowpass(copy, 2.0)
    hole = known.expand_as(image) < 0.5
    assert torch.allclose(both[:, :3][hole], blend.clamp(-1, 1)[hole], atol=1e-6)
    grain = (both[:, :3] - lowpass(both[:, :3], 1.0))[hole].std()
    assert grain > 0.8 * (copy - lowpass(copy, 1.0))[hole].std()  # the copy's detail
    assert torch.equal(fill_holes(image, torch.ones_like(known), "patchmatch+biharmonic"),
                       torch.cat([image, image], dim=1))  # fmt: skip
    model = load_recipe("quickstart", ["model.prefill=patchmatch+biharmonic"]).model
    G = build_generator(model, 3, 96).eval()
    first = next(m for m in G.body.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 6 + 1
    mask = 1 - known
    damaged = image * known - mask
    with torch.no_grad():
        assert torch.equal(G(damaged, mask), both[:, :3] * mask + damaged * known)
        alone = prefill_only("patchmatch+biharmonic", True, 3).eval()(damaged, mask)
        assert torch.equal(alone, both[:, :3] * mask + damaged * known)
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
        other = both.clone()
        other[:, 3:] = 0
        assert not torch.equal(G(damaged, mask, both), G(damaged, mask, other))


@pytest.mark.integration
def test_a_resume_that_changes_the_prefill_scores_the_new_one(packed, tmp_path):
    """Hostile pass: resumed with another model.prefill (--resume-changed), the run printed
    the old prefill's scores under the new one's name, and 'the none prefill alone' for
    none; the scores are kept only for the prefill and validation data they scored."""
    import re

    from support import train_quickstart

    run = tmp_path / "run"
    first = train_quickstart(
        packed, 2, run, **{"model.prefill": "patchmatch", "train.eval_every": 2, "data.val": packed}
    )
    assert first.returncode == 0, first.stderr
    said = re.findall(r"the (\S+) prefill alone: hole_psnr ([\d.]+)", first.stdout)
    assert said and said[0][0] == "patchmatch", first.stdout
    extra = {"model.prefill": "biharmonic", "train.eval_every": 2, "data.val": packed}
    again = train_quickstart(packed, 4, run, "--resume-changed", **extra)
    assert again.returncode == 0, again.stderr
    (kind, value), *_ = re.findall(r"the (\S+) prefill alone: hole_psnr ([\d.]+)", again.stdout)
    assert kind == "biharmonic" and value != said[0][1], again.stdout
    last = train_quickstart(
        packed,
        6,
        run,
        "--resume-changed",
        **{"model.prefill": "none", "train.eval_every": 2, "data.val": packed},
    )
    assert last.returncode == 0, last.stderr
    assert "step 6 validation" in last.stdout and "prefill alone" not in last.stdout


@pytest.mark.integration
def test_training_says_when_its_pack_lacks_its_prefill(photo_dir, tmp_path):
    from support import run_cli, train_quickstart

    pack = tmp_path / "bare"
    made = run_cli("data", "pack", str(photo_dir), str(pack), "--size", "32", "--prefill", "none")
    assert made.returncode == 0, made.stderr
    result = train_quickstart(pack, 1, tmp_path / "run", **{"data.val": "null"})
    assert result.returncode == 0, result.stderr
    assert f"note: {pack} holds no packed biharmonic prefill, so it is solved at every step" in (
        result.stdout
    )


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("", "name kinds separated by commas, or none"),
        (",", "name kinds separated by commas, or none"),
        ("patchmatch+", "name kinds separated by commas, or none"),
        ("none,patchmatch", "none packs no prefill; give it alone"),
        ("foo", "--prefill takes biharmonic, harmonic, patchmatch or none"),
        ("x" * 5000, "--prefill takes biharmonic, harmonic, patchmatch or none"),
        ("+" + "y" * 5000, "name kinds separated by commas, or none"),
    ],
    ids=["empty", "comma", "trailing-plus", "none-beside", "unknown", "long", "long-empty"],
)
def test_bad_prefill_values_for_a_pack_are_refused(photo_dir, tmp_path, given, said):
    from typer.testing import CliRunner

    from gan_dist.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["data", "pack", str(photo_dir), str(out), "--prefill", given])
    assert result.exit_code == 1 and said in result.output, result.output
    assert len(result.output) < 400  # a hostile value is cut short, not echoed whole
    assert not out.exists()


def test_a_repeated_prefill_is_packed_once_and_a_combined_kind_as_its_parts(photo_dir, tmp_path):
    from typer.testing import CliRunner

    from gan_dist.cli import app

    out = tmp_path / "out"
    args = [
        "data",
        "pack",
        str(photo_dir),
        str(out),
        "--size",
        "32",
        "--prefill",
        "patchmatch, patchmatch+biharmonic",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert manifest["prefills"] == ["patchmatch", "biharmonic"]


def test_a_one_pixel_side_passes_the_low_pass_through():
    """Hostile pass: a 40x1 px image with a patchmatch+biharmonic model failed repair with
    torchvision's 'kernel_size should have odd and positive integers. Got [-1, -1]'."""
    from gan_dist.core.filters import lowpass

    line = torch.rand(1, 3, 1, 40)
    assert torch.equal(lowpass(line, 4.0), line)
    known = torch.ones(1, 1, 1, 40)
    known[..., 10:20] = 0
    assert fill_holes(line * 2 - 1, known, "patchmatch+biharmonic").shape == (1, 6, 1, 40)
    assert lowpass(torch.rand(1, 1, 2, 40), 4.0).shape == (1, 1, 2, 40)


@pytest.mark.integration
def test_a_resume_that_reshapes_the_generator_says_how(packed, tmp_path):
    """Hostile pass: prefill biharmonic -> patchmatch+biharmonic (3 more input channels)
    with --resume-changed was refused with torch's bare header and no reason."""
    from support import train_quickstart

    run = tmp_path / "run"
    assert train_quickstart(packed, 2, run).returncode == 0
    again = train_quickstart(
        packed, 4, run, "--resume-changed", **{"model.prefill": "patchmatch+biharmonic"}
    )
    assert again.returncode != 0
    assert "size mismatch for body." in again.stderr and "with model.init instead" in again.stderr


def test_a_batch_of_packed_and_unpacked_samples_stacks_every_prefill():
    """Review: with patchmatch+biharmonic a batch mixing samples the pack solved (6 channels)
    and samples it did not (solved here) stacked 3-channel placeholders beside them."""
    from gan_dist.data.stream import _collate

    image, known = photo(), box()
    mask = 1 - known[0]
    packed = fill_holes(image, known, "patchmatch+biharmonic")[0]
    common = {"clean": image[0], "damaged": image[0], "mask": mask, "key": "k", "worker": 0}
    common |= {"skipped": 0, "pulled": 1}
    batch = _collate(
        [common | {"start": packed}, common | {"start": None}], "patchmatch+biharmonic"
    )
    assert batch["start"].shape == (2, 6, 96, 96)
    assert torch.allclose(batch["start"][1], packed, atol=1e-6)


def test_every_prefill_a_recipe_names_can_be_packed():
    """The demo packs the parts of quickstart's model.prefill; a combined kind once reached
    PackOptions whole and was refused."""
    from gan_dist.cli.data import _prefills
    from gan_dist.core.prefill import PREFILLS, prefill_parts
    from gan_dist.data.pack import PACKED_PREFILLS

    for kind in PREFILLS:
        if kind != "none":
            assert set(prefill_parts(kind)) <= set(PACKED_PREFILLS), kind
            assert _prefills(kind) == tuple(prefill_parts(kind))


def test_a_low_passed_correction_leaves_the_exemplar_detail_and_learns():
    """model.correction_lowpass: the generator's correction is blurred before it is added,
    so the start's detail above that sigma reaches the output untouched, whatever the
    weights, and gradients still reach every layer."""
    from gan_dist.config.recipe import load_recipe
    from gan_dist.core.filters import lowpass
    from gan_dist.nets.build import build_generator

    torch.manual_seed(0)
    image, known = photo(), box()
    mask = 1 - known
    damaged = image * known - mask
    sets = ["model.prefill=patchmatch+biharmonic", "model.correction_lowpass=2"]
    G = build_generator(load_recipe("quickstart", sets).model, 3, 96)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.02 * torch.randn_like(p))
    both = fill_holes(image, known, "patchmatch+biharmonic")
    out = G(damaged, mask, both)
    with torch.no_grad():
        raw = G.body(torch.cat([both, mask], dim=1))  # the correction as the body makes it
    hole = (mask > 0.5).expand_as(image)
    unclamped = hole & (out.abs() < 0.999)
    assert unclamped.sum() > 0.5 * hole.sum()
    correction = out - both[:, :3]
    assert raw[hole].abs().max() > 1e-2  # it corrects, but only by the blurred correction
    assert torch.allclose(correction[unclamped], lowpass(raw, 2.0)[unclamped], atol=1e-5)
    out[:, :, 40:50, 40:50].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())


def test_a_low_passed_correction_without_a_prefill_is_refused():
    """Hostile pass: model.correction_lowpass with model.prefill: none trained exactly as
    without it, and the saved recipe claimed the blur."""
    from gan_dist.config.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="model.prefill: none has none"):
        load_recipe("quickstart", ["model.prefill=none", "model.correction_lowpass=2"])
    assert load_recipe("quickstart", ["model.prefill=none", "model.correction_lowpass=0"])
