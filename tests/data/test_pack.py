from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gan_dist.cli import app
from gan_dist.core.errors import GanDistError
from gan_dist.data.images import decode_png, sample_part, write_png_atomic
from gan_dist.data.inspect import inspect_shards
from gan_dist.data.pack import STAGING, PackOptions, pack_folder, pack_pairs, read_manifest
from support import gradient16, options, pack_cli, read_samples, save_pil

runner = CliRunner()


@pytest.mark.integration
def test_messy_folder_packs_what_it_can_and_lists_every_skip(messy_dir, tmp_path):
    out = tmp_path / "out"
    result = pack_cli(str(messy_dir), str(out), "--size", "48", "--val-fraction", "0")
    assert result.exit_code == 0, result.output
    text = result.output
    for name, reason in [
        ("empty.png", "empty file (0 bytes)"),
        ("truncated.jpg", "corrupt or truncated"),
        ("notes-really.jpg", "not a recognised image"),
        ("tiny.png", "too small (1x1 px"),
        ("huge.png", "too large (10001x10001 px"),
        ("readme.txt", "not an image file (.txt)"),
    ]:
        line = next((ln for ln in text.splitlines() if name in ln), "")
        assert reason in line, f"{name}: {line!r}\n{text}"
    assert "6 files skipped" in text
    assert "alpha channel dropped" in text and "CMYK converted to RGB" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 4, "val": 0}  # cmyk, deep16, alpha, sub/good
    assert manifest["skipped"] == 6 and manifest["bit_depth"] == 16 and manifest["channels"] == 3
    sources = sorted(json.loads(s["json"])["source"] for s in read_samples(out))
    assert sources == ["alpha.png", "cmyk.jpg", "deep16.png", "sub/good.png"]


@pytest.mark.integration
def test_nothing_packable_fails_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    (src / "b.txt").write_text("x")
    out = tmp_path / "out"
    result = pack_cli(str(src), str(out))
    assert result.exit_code == 1
    assert "nothing packed: all 2 input files were skipped" in result.output
    assert not out.exists()


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_bad_src_is_refused_before_anything_is_written(tmp_path, kind):
    src = tmp_path / "src"
    if kind == "empty":
        src.mkdir()
    elif kind == "file":
        src.write_text("x")
    out = tmp_path / "out"
    result = pack_cli(str(src), str(out))
    assert result.exit_code == 1
    expected = {"missing": "does not exist", "empty": "holds no files", "file": "not a directory"}
    assert expected[kind] in result.output
    assert not out.exists()


@pytest.mark.integration
def test_existing_shards_are_kept_unless_overwrite(photo_dir, tmp_path):
    out = tmp_path / "out"
    assert pack_cli(str(photo_dir), str(out), "--size", "32").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = pack_cli(str(photo_dir), str(out), "--size", "40")
    assert result.exit_code == 1
    assert "already holds packed shards" in result.output and "--overwrite" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert pack_cli(str(photo_dir), str(out), "--size", "40", "--overwrite").exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["image_size"] == 40


@pytest.mark.integration
def test_unwritable_out_is_a_clear_error(photo_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = pack_cli(str(photo_dir), str(blocker / "out"))
    assert result.exit_code == 1 and "is not writable" in result.output
    if os.geteuid() != 0:  # root ignores directory permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = pack_cli(str(photo_dir), str(locked))
        assert result.exit_code == 1 and "is not writable" in result.output
        assert list(locked.iterdir()) == []


@pytest.mark.parametrize("codec", ["auto", "png", "zstd"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_pixels_survive_pack_bit_exact(tmp_path, channels, codec):
    src = tmp_path / "src"
    originals = {f"img{i}.png": gradient16(64, 64, channels, seed=i) for i in range(3)}
    for name, arr in originals.items():
        write_png_atomic(src / name, arr)
    out = tmp_path / "out"
    # 64 px crops of 64 px images: the clean pixels are the source pixels, untouched
    result = pack_folder(src, out, options(size=64, crops_per_image=1, val_fraction=0, codec=codec))
    assert result.manifest["bit_depth"] == 16 and result.manifest["channels"] == channels
    stored = "zstd" if codec == "auto" else codec  # auto: arrays for 16-bit packs
    assert result.manifest["codec"] == stored
    ext = {"png": "png", "zstd": "npy.zst"}[stored]
    for sample in read_samples(out):
        source = json.loads(sample["json"])["source"]
        assert f"clean.{ext}" in sample
        clean = sample_part(sample, "clean")
        assert clean.dtype == np.uint16
        np.testing.assert_array_equal(clean, originals[source])
        assert sample_part(sample, "damaged").dtype == np.uint16
    report = inspect_shards(out)
    assert report.problems == [] and report.splits["train"].samples == 3
    assert report.splits["train"].bit_depths == {16}


def test_both_codecs_stream_the_same_batches(photo_dir, tmp_path):
    """The codec changes how pixels are stored, never which pixels come out."""
    from gan_dist.data.stream import StreamConfig, make_stream

    batches = {}
    for codec in ("png", "zstd"):
        out = pack_folder(photo_dir, tmp_path / codec, options(size=32, codec=codec)).out
        assert read_manifest(out)["codec"] == codec
        stream = make_stream(str(out), StreamConfig(4, 3, train=False))
        batches[codec] = list(stream)
    assert len(batches["png"]) == len(batches["zstd"]) > 0
    for a, b in zip(batches["png"], batches["zstd"], strict=True):
        for key in ("damaged", "clean", "mask"):
            assert torch.equal(a[key], b[key]), key


def test_a_pickled_array_in_a_shard_is_refused_not_loaded(photo_dir, tmp_path):
    """A zstd part is a .npy file: one holding Python objects would unpickle (run code)
    if loaded carelessly; it is a bad sample instead, skipped and counted."""
    import io

    import imagecodecs

    from gan_dist.data.stream import StreamConfig, make_stream

    out = pack_folder(photo_dir, tmp_path / "z", options(size=32, codec="zstd")).out
    shard = next(out.glob("train-*.tar"))
    evil = io.BytesIO()
    np.save(evil, np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(shard) as src, tarfile.open(tampered, "w") as dst:
        for i, member in enumerate(src.getmembers()):
            data = src.extractfile(member).read()
            if i == 1 and member.name.endswith(".npy.zst"):  # the first sample's part
                data = imagecodecs.zstd_encode(evil.getvalue())
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    stream = make_stream(str(tampered), StreamConfig(1, 3, train=False))
    list(stream)
    assert stream.skipped == 1


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x28\xb5\x2f\xfd truncated", "npz", "float64", "uint8-in-16-bit"],
    ids=["empty", "truncated", "npz", "float64", "wrong-depth"],
)
def test_a_bad_array_part_is_named_by_inspect_and_skipped_by_training(tmp_path, bad):
    """Hostile or broken .npy.zst parts, also in a shard's first sample (which training
    reads to check the data's shape): named with the sample and part, never a traceback."""
    import io

    import imagecodecs

    from gan_dist.data.stream import check_shards

    src = tmp_path / "src"
    for i in range(3):
        write_png_atomic(src / f"img{i}.png", gradient16(32, 32, 1, seed=i))
    out = pack_folder(src, tmp_path / "z", options(size=32, val_fraction=0, shard_samples=8)).out
    if isinstance(bad, str):
        arr = {
            "float64": np.zeros((32, 32, 1)),
            "uint8-in-16-bit": np.zeros((32, 32, 1), np.uint8),
        }.get(bad)
        raw = io.BytesIO()
        if arr is None:
            np.savez(raw, a=np.zeros(3))
        else:
            np.save(raw, arr)
        bad = imagecodecs.zstd_encode(raw.getvalue())
    shard = out / "train-000000.tar"
    tampered = tmp_path / "t.tar"
    with tarfile.open(shard) as src_tar, tarfile.open(tampered, "w") as dst:
        for member in src_tar.getmembers():
            data = src_tar.extractfile(member).read()
            if member.name.startswith("train00000000.clean"):  # the very first sample
                data, member.size = bad, len(bad)
            dst.addfile(member, io.BytesIO(data))
    tampered.replace(shard)
    report = inspect_shards(out)
    text = " ".join(report.problems)
    assert report.problems, "a tampered shard must not look healthy"
    assert "train00000000" in text or "bit depths [8]" in text, text
    check_shards(str(shard), 1, 32, "data.train")  # the next sample tells the shape


@pytest.mark.integration
def test_an_unknown_codec_is_refused_before_anything_is_written(photo_dir, tmp_path):
    result = pack_cli(str(photo_dir), str(tmp_path / "out"), "--codec", "jpeg")
    assert result.exit_code != 0 and "--codec must be auto, png or zstd" in result.output
    assert not (tmp_path / "out").exists()


def test_dicom_folder_packs_to_16bit_greyscale(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    src = tmp_path / "dicom"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (src / name).write_bytes(Path(pydicom.data.get_testdata_file(name)).read_bytes())
    out = tmp_path / "out"
    result = pack_folder(src, out, options(size=64, val_fraction=0))
    m = result.manifest
    assert (m["channels"], m["bit_depth"], m["counts"]["train"]) == (1, 16, 2)
    report = inspect_shards(out)
    assert report.problems == [] and report.splits["train"].samples == 2
    meta = json.loads(read_samples(out)[0]["json"])
    assert "dicom_min" in meta and "dicom_max" in meta


def test_packing_is_deterministic(photo_dir, tmp_path):
    a = pack_folder(photo_dir, tmp_path / "a", options(crops_per_image=2, damage="old-photo"))
    b = pack_folder(photo_dir, tmp_path / "b", options(crops_per_image=2, damage="old-photo"))
    assert [s["sha256"] for s in a.manifest["shards"]] == [
        s["sha256"] for s in b.manifest["shards"]
    ]


def test_crops_of_one_image_stay_in_one_split(photo_dir, tmp_path):
    out = tmp_path / "out"
    result = pack_folder(photo_dir, out, options(crops_per_image=3, val_fraction=0.34))
    assert result.manifest["source_images"] == {"train": 4, "val": 2}
    assert result.manifest["counts"] == {"train": 12, "val": 6}
    train = {json.loads(s["json"])["source"] for s in read_samples(out, "train")}
    val = {json.loads(s["json"])["source"] for s in read_samples(out, "val")}
    assert not train & val and len(val) == 2


def test_manifest_lists_each_shard_with_count_and_sha(photo_dir, tmp_path):
    out = tmp_path / "out"
    manifest = pack_folder(photo_dir, out, options(crops_per_image=3)).manifest
    assert sum(s["samples"] for s in manifest["shards"]) == 18
    for shard in manifest["shards"]:
        data = (out / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert len(read_samples_from(data)) == shard["samples"] <= 4
    assert manifest["damage"][0]["type"] == "mask" and manifest["gan_dist_version"]
    assert manifest["prefills"] == ["biharmonic", "patchmatch"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def read_samples_from(data: bytes) -> set[str]:
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    parts = {"damaged.png", "clean.png", "mask.png", "json"}
    prefills = {"prefill-biharmonic.png", "prefill-patchmatch.png"}  # samples with holes
    assert parts <= {n.partition(".")[2] for n in names} <= parts | prefills
    return {n.partition(".")[0] for n in names}


def test_interrupted_pack_leaves_nothing_that_looks_complete(photo_dir, tmp_path):
    out = tmp_path / "out"
    pack_folder(photo_dir, out, options(size=32))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupt(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack_folder(photo_dir, out, options(size=48, overwrite=True), interrupt)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old pack intact
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        pack_folder(photo_dir, fresh, options(size=48), interrupt)
    assert not fresh.exists()


def test_leftover_staging_is_named_by_inspect(photo_dir, tmp_path):
    out = tmp_path / "out"
    (out / STAGING).mkdir(parents=True)
    (out / STAGING / "train-000000.tar").write_bytes(b"partial")
    with pytest.raises(GanDistError, match="interrupted pack"):
        inspect_shards(out)


def test_paired_mode_matches_by_relative_path(tmp_path):
    rng = np.random.default_rng(0)
    clean, damaged, masks = tmp_path / "clean", tmp_path / "damaged", tmp_path / "masks"
    for rel in ("a", "sub/b", "c"):
        img = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
        save_pil(clean / f"{rel}.png", img)
        save_pil(damaged / f"{rel}.jpg", img // 2)
        mask = np.zeros((50, 50), np.uint8)
        mask[10:20, 10:30] = 200  # grey-ish white is still "missing"
        save_pil(masks / f"{rel}.png", mask)
    save_pil(clean / "lonely.png", np.zeros((50, 50, 3), np.uint8))
    save_pil(damaged / "orphan.png", np.zeros((50, 50, 3), np.uint8))
    save_pil(damaged / "c.jpg", np.zeros((40, 50, 3), np.uint8))  # size mismatch
    out = tmp_path / "out"
    result = pack_pairs(clean, damaged, masks, out, PackOptions(size=50, val_fraction=0))
    reasons = {s.path: s.reason for s in result.skipped}
    assert "no damaged image" in reasons["clean/lonely"]
    assert "no clean image" in reasons["damaged/orphan"]
    assert "pairs must match in size" in reasons["c"]
    samples = read_samples(out)
    assert sorted(json.loads(s["json"])["source"] for s in samples) == ["a", "sub/b"]
    mask = decode_png(samples[0]["mask.png"])
    assert set(np.unique(mask)) == {0, 255} and (mask > 0).sum() == 200
    assert result.manifest["mode"] == "paired" and result.manifest["damage"] is None


def test_out_inside_src_is_not_read_as_input(photo_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in photo_dir.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    pack_folder(src, src / "shards", options(size=32))
    again = pack_folder(src, src / "shards", options(size=32, overwrite=True))
    assert again.skipped == [] and again.packed_images == 6


@pytest.mark.integration
def test_paired_mode_refuses_damage(tmp_path):
    result = pack_cli(
        "--clean",
        str(tmp_path),
        "--damaged",
        str(tmp_path),
        "--damage",
        "denoise",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 1 and "--damage applies to clean images" in result.output


@pytest.mark.integration
def test_paired_mode_needs_both_folders(tmp_path):
    result = pack_cli("--clean", str(tmp_path), str(tmp_path / "out"))
    assert result.exit_code == 1 and "needs both --clean DIR and --damaged DIR" in result.output


def test_inspect_reads_back_exact_counts_and_draws_a_grid(photo_dir, tmp_path):
    out = tmp_path / "out"
    pack_folder(photo_dir, out, options(crops_per_image=2))
    grid = tmp_path / "grid.png"
    result = runner.invoke(app, ["data", "inspect", str(out), "--grid", str(grid), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["splits"]["train"]["samples"] == 10 and report["splits"]["val"]["samples"] == 2
    assert 0.1 <= report["splits"]["train"]["mean_mask_coverage"] <= 0.5
    assert report["problems"] == []
    picture = decode_png(grid.read_bytes())
    # two rows of three 64 px pictures under a header line naming the columns
    rows = 2 * 64 + 4
    assert picture.shape[1:] == (3 * 64 + 8, 3) and picture.shape[0] > rows + 4
    header = picture[: picture.shape[0] - rows - 4]
    assert (header < 128).any(), "the column labels are drawn"


def test_inspect_flags_a_corrupt_shard(photo_dir, tmp_path):
    out = tmp_path / "out"
    pack_folder(photo_dir, out, options(crops_per_image=2))
    shard = out / "train-000000.tar"
    with tarfile.open(shard) as tar:  # cut where the second sample's mask was to start
        cut = tar.getmember("train00000001.mask.png").offset
    shard.write_bytes(shard.read_bytes()[:cut])
    result = runner.invoke(app, ["data", "inspect", str(out)])
    assert result.exit_code == 1
    assert "train-000000.tar: sha256 differs" in result.output
    # the cut falls inside a sample: it is named, and the count shows what was lost
    assert "train-000000.tar: 1 bad sample(s): sample train00000001: missing" in result.output
    assert "train-000000.tar: 2 samples, the manifest says 4" in result.output
