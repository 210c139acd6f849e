"""Hostile data for packing, streaming and scoring: shards that claim gigabytes, sizes no
net can train on, images too small to score, and scores JSON cannot hold."""

from __future__ import annotations

import io
import json

import imagecodecs
import numpy as np
import pytest
import torch
from PIL import Image

from gan_dist.config.recipe import load_recipe
from gan_dist.core.errors import RecipeError
from gan_dist.data.images import MAX_PART_BYTES, decode_part, encode_array
from gan_dist.metrics.evaluate import MAX_PSNR, repair_metrics
from support import make_model, pack_cli, run_cli


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A real one: 300 MB of zeros as a .npy in a few kB of zstd."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((10000, 10000, 3), np.uint8))
    return imagecodecs.zstd_encode(buf.getbuffer(), level=3)


def test_a_zstd_part_that_inflates_past_the_limit_is_refused_before_decoding(bomb):
    assert len(bomb) < 100_000
    with pytest.raises(ValueError, match="claims 300,000,128 bytes, over the"):
        decode_part("clean.npy.zst", bomb)


@pytest.mark.parametrize("claim", [MAX_PART_BYTES + 1, 2**40, 2**64 - 1])
def test_a_zstd_header_that_claims_more_than_the_limit_is_refused(claim):
    frame = bytearray(encode_array(np.zeros((8, 8, 1), np.uint8)))
    frame[4] = 0xE0  # single segment, an 8-byte content size field
    frame[5:6] = claim.to_bytes(8, "little")
    with pytest.raises(ValueError, match="over the .* limit"):
        decode_part("mask.npy.zst", bytes(frame))


def test_ordinary_zstd_parts_still_decode_exactly():
    rng = np.random.default_rng(0)
    for arr in (
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        rng.integers(0, 65536, (33, 47, 1), dtype=np.uint16),
    ):
        assert np.array_equal(decode_part("clean.npy.zst", encode_array(arr)), arr)


@pytest.mark.integration
@pytest.mark.parametrize("size", ["8", "16", "31"])
def test_pack_refuses_a_size_no_net_trains_on(photo_dir, tmp_path, size):
    result = pack_cli(str(photo_dir), str(tmp_path / "out"), "--size", size)
    assert result.exit_code == 1 and "must be 32 to 8192 px" in result.output
    assert not (tmp_path / "out").exists()


def test_a_recipe_below_the_smallest_size_is_refused():
    with pytest.raises(RecipeError, match="data.image_size"):
        load_recipe("quickstart", ["data.image_size=16"])


def test_an_exact_repair_scores_a_finite_psnr():
    target = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:16, 8:16] = 1
    scores = repair_metrics(target.clone(), target, mask)
    assert torch.equal(scores["psnr"], torch.full((2,), MAX_PSNR))
    assert torch.allclose(scores["hole_psnr"], torch.full((2,), MAX_PSNR))


@pytest.mark.integration
def test_eval_on_a_folder_names_what_it_skipped_and_prints_valid_json(tmp_path):
    model = make_model(tmp_path / "model")
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
            folder / f"{name}.png"
        )
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "thumb.png")
    result = run_cli("eval", "--model", str(model), "--data", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    assert "thumb.png" in result.stderr and "too small" in result.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    report = json.loads(result.stdout, parse_constant=refuse)
    assert report["samples"] == 2
    assert [s["file"] for s in report["skipped"]] == ["thumb.png"]


@pytest.mark.integration
def test_eval_on_a_folder_with_nothing_scorable_names_the_files(tmp_path):
    model = make_model(tmp_path / "model")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "dot.png")
    (folder / "empty.png").write_bytes(b"")
    result = run_cli("eval", "--model", str(model), "--data", str(folder), "--json")
    assert result.returncode == 1
    assert "dot.png" in result.stderr and "empty.png" in result.stderr
    assert "Traceback" not in result.stderr
