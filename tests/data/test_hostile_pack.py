"""Hostile and careless inputs to `gan-dist data pack`: a pack replaces only what an earlier
pack wrote, never reads its own output as input, and never stores a broken image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gan_dist.core.errors import GanDistError
from gan_dist.data.images import encode_png, read_image, sample_part
from gan_dist.data.pack import PackOptions, pack_folder, pack_pairs
from support import gradient16, options, pack_cli, read_samples, save_pil


@pytest.mark.integration
def test_the_reported_case_a_users_backup_tar_survives_overwrite(photo_dir, tmp_path):
    out = tmp_path / "out"
    assert pack_cli(str(photo_dir), str(out), "--size", "32").exit_code == 0
    (out / "backup_train.tar").write_bytes(b"the user's own archive")
    (out / "notes.txt").write_text("mine")
    result = pack_cli(str(photo_dir), str(out), "--size", "40", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "backup_train.tar").read_bytes() == b"the user's own archive"
    assert (out / "notes.txt").read_text() == "mine"
    listed = {s["name"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    tars = {p.name for p in out.glob("*.tar")}
    assert tars == listed | {"backup_train.tar"}


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_shard_named_file_no_manifest_lists_is_never_replaced(photo_dir, tmp_path, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"someone else's shard")
    with pytest.raises(GanDistError, match="no gan-dist manifest.json there lists"):
        pack_folder(photo_dir, out, options(size=32, overwrite=overwrite))
    assert (out / "train-000000.tar").read_bytes() == b"someone else's shard"


@pytest.mark.parametrize(
    "manifest", ['{"format": "something-else"}', "[1, 2", '{"format": "gan-dist-shards"}']
)
def test_a_manifest_that_is_not_ours_is_kept(photo_dir, tmp_path, manifest):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    with pytest.raises(GanDistError, match="not a readable gan-dist manifest"):
        pack_folder(photo_dir, out, options(size=32, overwrite=True))
    assert (out / "manifest.json").read_text() == manifest


def test_a_hostile_manifest_cannot_point_overwrite_outside_out(photo_dir, tmp_path):
    out, victim = tmp_path / "out", tmp_path / "precious.txt"
    victim.write_text("keep me")
    pack_folder(photo_dir, out, options(size=32))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"].append({"name": "../precious.txt"})
    (out / "manifest.json").write_text(json.dumps(manifest))
    pack_folder(photo_dir, out, options(size=40, overwrite=True))
    assert victim.read_text() == "keep me"


@pytest.mark.integration
def test_out_is_src_is_named(photo_dir, tmp_path):
    result = pack_cli(str(photo_dir), str(photo_dir), "--size", "32")
    assert result.exit_code == 1 and "OUT is SRC" in result.output
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    save_pil(clean / "a.png", np.zeros((40, 40, 3), np.uint8))
    save_pil(damaged / "a.png", np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(GanDistError, match="OUT is --damaged"):
        pack_pairs(clean, damaged, None, damaged, PackOptions(size=32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_scan_is_skipped_with_its_reason(photo_dir, tmp_path, bad):
    import tifffile

    src = tmp_path / "src"
    src.mkdir()
    arr = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    tifffile.imwrite(src / "good.tif", arr)
    arr[3, 3] = bad
    tifffile.imwrite(src / "bad.tif", arr)
    result = pack_folder(src, tmp_path / "out", options(size=32, val_fraction=0.0))
    reasons = {s.path: s.reason for s in result.skipped}
    assert "NaN or infinite" in reasons["bad.tif"]
    assert result.manifest["source_images"]["train"] == 1


def test_16_bit_grey_alpha_packs_as_16_bit_grey(tmp_path):
    deep = gradient16(48, 48, channels=2)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "la16.png").write_bytes(encode_png(deep))
    assert read_image(tmp_path / "src" / "la16.png").pixels.dtype == np.uint16
    pack_folder(tmp_path / "src", tmp_path / "out", options(size=48, val_fraction=0.0))
    (sample,) = read_samples(tmp_path / "out")
    clean = sample_part(sample, "clean")
    assert clean.dtype == np.uint16 and clean.shape == (48, 48, 1)
    assert np.array_equal(clean[:, :, 0], deep[:, :, 0])


def test_a_file_name_that_is_not_utf8_is_packed_like_any_other(tmp_path):
    import os

    src = tmp_path / "src"
    for name in ("ok1.png", "ok2.png"):
        save_pil(src / name, np.full((40, 40, 3), 90, np.uint8))
    odd = Path(os.fsdecode(os.fsencode(str(src)) + b"/bad\xffname.png"))
    save_pil(odd, np.full((40, 40, 3), 30, np.uint8))
    result = pack_folder(src, tmp_path / "out", options(size=32, val_fraction=0.4))
    assert result.packed_images == 3


@pytest.mark.integration
@pytest.mark.parametrize("args", [["--size", "100000"], ["--size", "10" * 20], ["--seed", "-1"]])
def test_pack_options_out_of_range_are_one_line_refusals(photo_dir, tmp_path, args):
    result = pack_cli(str(photo_dir), str(tmp_path / "out"), "--size", "32", *args)
    assert result.exit_code == 1 and "must be" in result.output
    assert not (tmp_path / "out").exists()


def test_a_skipped_float_scan_does_not_decide_the_packs_depth(tmp_path):
    import tifffile

    src = tmp_path / "src"
    for i in range(3):
        save_pil(src / f"p{i}.png", np.full((40, 40, 3), 60 + i, np.uint8))
    scan = np.ones((40, 40), np.float32)
    scan[0, 0] = np.nan
    tifffile.imwrite(src / "nan.tif", scan)
    result = pack_folder(src, tmp_path / "out", options(size=32, val_fraction=0.0))
    assert "nan.tif" in {s.path for s in result.skipped}
    assert result.manifest["bit_depth"] == 8
