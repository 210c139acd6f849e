"""Hostile and careless inputs to `gan-dist repair`: each kind of loss walked with several
instances. Nothing a user hands us may be overwritten, matched wrongly, cut in depth or
silently left unrepaired, and one odd file never stops a folder."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_dist.core.errors import GanDistError
from gan_dist.data.images import decode_png, encode_png, read_image
from gan_dist.repair.files import plan, read_mask
from support import hole, make_model, run_cli


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("grey"), "data.channels=1")


def photo(path: Path, h: int = 40, w: int = 48, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8) // 2 + value // 2).save(path)
    return path


def mask_file(path: Path, h: int = 40, w: int = 48, high: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png((hole(h, w) * high).astype(np.uint8)[:, :, None]))
    return path


def snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for f in folders for p in f.rglob("*") if p.is_file()}


# --- outputs never land on inputs or masks ---------------------------------------------------


@pytest.mark.integration
def test_the_reported_case_an_input_file_and_its_own_folder_as_output(model, tmp_path):
    original = photo(tmp_path / "photos" / "a.png")
    before = original.read_bytes()
    args = ["repair", str(original), str(tmp_path / "photos"), "--model", str(model)]
    result = run_cli(*args, "--overwrite", "--mask", str(mask_file(tmp_path / "m.png")))
    assert result.returncode == 1 and "would overwrite an input image" in result.stderr
    assert original.read_bytes() == before


@pytest.mark.parametrize(
    "case", ["mask-file-as-output", "mask-folder-as-output", "inside-mask-folder", "symlink"]
)
def test_no_output_lands_on_an_input_or_a_mask(tmp_path, case):
    src, masks = tmp_path / "photos", tmp_path / "masks"
    photo(src / "a.png")
    mask_file(masks / "a.png")
    if case == "mask-file-as-output":
        args = (src / "a.png", masks / "a.png", masks / "a.png")
    elif case == "mask-folder-as-output":
        args = (src, masks, masks)
    elif case == "inside-mask-folder":
        args = (src, masks / "repaired", masks)
    else:  # an output path that is a symlink to the input itself
        (tmp_path / "out").mkdir()
        os.symlink(src / "a.png", tmp_path / "out" / "a.png")
        args = (src, tmp_path / "out", masks)
    with pytest.raises(GanDistError, match="would (overwrite|land inside)"):
        plan(*args)


def test_two_inputs_that_would_share_an_output_are_refused(tmp_path):
    photo(tmp_path / "photos" / "a.png")
    photo(tmp_path / "photos" / "a.jpg")
    with pytest.raises(GanDistError, match="would both be written"):
        plan(tmp_path / "photos", tmp_path / "out", None, "png")


def test_an_output_suffix_that_cannot_be_written_is_refused_before_work(tmp_path):
    with pytest.raises(GanDistError, match=r"OUTPUT .*\.gif"):
        plan(photo(tmp_path / "a.png"), tmp_path / "a.gif", None)


# --- masks by exact relative path and stem, one binarisation rule ----------------------------


@pytest.mark.parametrize(
    "image, masks, expected",
    [
        ("day.jpg", ["day.1.png"], None),  # another image's mask, never this one's
        ("day.jpg", ["day.1.png", "day.png"], "day.png"),
        ("photo[1].jpg", ["photo[1].png"], "photo[1].png"),  # not a glob
        ("a*b?.png", ["axxbz.png", "a*b?.png"], "a*b?.png"),
        ("scan.v2.tif", ["scan.png", "scan.v2.png"], "scan.v2.png"),
        ("sub/x.png", ["x.png"], None),  # same stem, other folder
        ("day.jpg", ["day_mask.png"], "day_mask.png"),
        ("day.jpg", ["day-mask.tif"], "day-mask.tif"),
        ("day.jpg", ["day_mask001.png"], "day_mask001.png"),  # LaMa's numbered masks
        ("day.jpg", ["daymask.png", "day_masks.png", "day.mask.png", "day_mask_a.png"], None),
        ("day.jpg", ["day_mask.1.png", "Day_mask.png", "xday_mask.png"], None),
        ("a[1]*.jpg", ["a[1]*_mask.png", "a1x_mask.png"], "a[1]*_mask.png"),
        ("day_mask.jpg", ["day_mask.png"], "day_mask.png"),  # an image's own stem ends in _mask
        ("day_mask.jpg", ["day_mask_mask.png"], "day_mask_mask.png"),
        ("day.jpg", ["day_MASK.png"], "day_MASK.png"),  # the mask suffix in any case
        ("day.jpg", ["day-Mask01.png"], "day-Mask01.png"),
        ("caf\u00e9.jpg", ["cafe\u0301_mask.png"], "cafe\u0301_mask.png"),  # macOS: decomposed
        ("cafe\u0301.jpg", ["caf\u00e9.png"], "caf\u00e9.png"),
    ],
)
def test_masks_match_by_exact_relative_path_and_full_stem(tmp_path, image, masks, expected):
    photo(tmp_path / "src" / image)
    for name in masks:
        mask_file(tmp_path / "masks" / name)
    (job,) = plan(tmp_path / "src", tmp_path / "out", tmp_path / "masks")
    assert job.problem == ""
    found = job.mask.name if job.mask else None
    assert found == expected


@pytest.mark.integration
def test_two_masks_for_one_image_fail_that_image_naming_both(model, tmp_path):
    photo(tmp_path / "src" / "a.png")
    photo(tmp_path / "src" / "b.png")
    for name in ("a.png", "a.tif", "b.png"):
        mask_file(tmp_path / "masks" / name)
    args = [str(tmp_path / "src"), str(tmp_path / "out"), "--mask", str(tmp_path / "masks")]
    result = run_cli("repair", *args, "--model", str(model), "--json")
    assert result.returncode == 1
    rows = {Path(r["source"]).name: r for r in json.loads(result.stdout)["files"]}
    assert rows["a.png"]["status"] == "failed"
    assert "a.png" in rows["a.png"]["detail"] and "a.tif" in rows["a.png"]["detail"]
    assert rows["b.png"]["status"] == "repaired"


@pytest.mark.parametrize(
    "masks",
    [
        ["day.png", "day_mask.png"],
        ["day_mask000.png", "day_mask001.png", "day_mask002.png"],  # LaMa: one case each
        ["day-mask.png", "day_mask.tif"],
    ],
)
def test_every_mask_that_could_be_an_images_own_is_named_and_none_chosen(tmp_path, masks):
    photo(tmp_path / "src" / "day.jpg")
    for name in masks:
        mask_file(tmp_path / "masks" / name)
    (job,) = plan(tmp_path / "src", tmp_path / "out", tmp_path / "masks")
    assert job.mask is None and f"{len(masks)} masks could belong" in job.problem
    assert all(str(tmp_path / "masks" / name) in job.problem for name in masks)


def test_a_mask_named_as_another_images_own_stem_is_that_images_only(tmp_path):
    """`face_mask.png` is the mask of `face_mask.jpg` (full stem), not a second candidate
    of `face.jpg`; alone, it would have been face.jpg's by the `_mask` convention."""
    for name in ("face.jpg", "face_mask.jpg", "car.jpg"):
        photo(tmp_path / "src" / name)
    for name in ("face.png", "face_mask.png", "car_mask.png"):
        mask_file(tmp_path / "masks" / name)
    jobs = {j.image.name: j for j in plan(tmp_path / "src", tmp_path / "out", tmp_path / "masks")}
    assert {n: (j.mask.name, j.problem) for n, j in jobs.items()} == {
        "face.jpg": ("face.png", ""),
        "face_mask.jpg": ("face_mask.png", ""),
        "car.jpg": ("car_mask.png", ""),
    }


def test_a_missing_mask_names_the_file_looked_for_and_the_masks_left_over(tmp_path):
    photo(tmp_path / "src" / "a" / "day.jpg")
    photo(tmp_path / "src" / "a" / "night.jpg")
    for name in ("a/night.png", "a/Day.png", "b/day.png", "a/day_maske.png"):
        mask_file(tmp_path / "masks" / name)
    jobs = {j.image.name: j for j in plan(tmp_path / "src", tmp_path / "out", tmp_path / "masks")}
    assert jobs["night.jpg"].mask == tmp_path / "masks" / "a" / "night.png"
    told = jobs["day.jpg"].no_mask
    assert jobs["day.jpg"].mask is None and jobs["day.jpg"].problem == ""
    assert f"looked for {tmp_path / 'masks' / 'a' / 'day'}.png, day_mask.png" in told
    left = told.split("masks no image took: ")[1]
    assert left.split(", ") == [
        str(tmp_path / "masks" / n) for n in ("a/Day.png", "a/day_maske.png", "b/day.png")
    ]  # the same folder first; night.png was taken
    missing = plan(tmp_path / "src", tmp_path / "out", tmp_path / "masks" / "b")
    assert "masks/b/a does not exist" in {j.image.name: j for j in missing}["day.jpg"].no_mask


@pytest.mark.integration
def test_lama_layout_masks_beside_their_images_are_masks_not_images(model, tmp_path):
    """LaMa's eval folders keep `x.png` beside `x_mask000.png`: with the same folder as INPUT
    and --mask, the masks pair with their images and are never repaired themselves; an
    image without one says what was looked for, and outputs still may not land inside."""
    lama = tmp_path / "lama"
    for name in ("one.png", "two.jpg", "sub/three.png", "lonely.png", "day.png", "day.jpg"):
        photo(lama / name)
    for name in ("one_mask000.png", "two_mask.png", "sub/three-mask.png", "day_mask.png"):
        mask_file(lama / name)
    before = snapshot(lama)
    jobs = {str(j.image.relative_to(lama)): j for j in plan(lama, tmp_path / "out", lama)}
    assert sorted(jobs) == [
        "day.jpg",
        "day.png",
        "lonely.png",
        "one.png",
        "sub/three.png",
        "two.jpg",
    ]
    assert jobs["one.png"].mask == lama / "one_mask000.png"
    assert jobs["sub/three.png"].mask == lama / "sub" / "three-mask.png"
    assert jobs["day.png"].mask == jobs["day.jpg"].mask == lama / "day_mask.png"  # not each other
    with pytest.raises(GanDistError, match="inside INPUT"):
        plan(lama, lama / "out", lama)

    args = [str(lama), str(tmp_path / "out"), "--mask", str(lama), "--json"]
    result = run_cli("repair", *args, "--model", str(model))
    assert result.returncode == 1, result.stdout + result.stderr  # lonely.png has no mask
    rows = {Path(r["source"]).name: r for r in json.loads(result.stdout)["files"]}
    assert sorted(rows) == ["day.jpg", "day.png", "lonely.png", "one.png", "three.png", "two.jpg"]
    assert rows["lonely.png"]["status"] == "failed"
    assert "looked for lonely_mask.png, lonely-mask.png" in rows["lonely.png"]["detail"]
    assert all(r["status"] == "repaired" for n, r in rows.items() if n != "lonely.png")
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.*"))
    assert written == ["day.jpg", "day.png", "one.png", "sub/three.png", "two.jpg"]
    assert snapshot(lama) == before


def test_a_mask_folder_or_file_inside_input_is_not_repaired_as_images(tmp_path):
    photo(tmp_path / "src" / "day.jpg")
    mask_file(tmp_path / "src" / "masks" / "day.png")
    mask_file(tmp_path / "src" / "masks" / "spare.png")
    mask_file(tmp_path / "src" / "hole.png")
    jobs = {
        j.image.name: j
        for j in plan(tmp_path / "src", tmp_path / "out", tmp_path / "src" / "masks")
    }
    assert sorted(jobs) == ["day.jpg", "hole.png"]
    assert jobs["day.jpg"].mask == tmp_path / "src" / "masks" / "day.png"
    jobs = plan(tmp_path / "src", tmp_path / "out", tmp_path / "src" / "hole.png")
    assert sorted(str(j.image.relative_to(tmp_path / "src")) for j in jobs) == [
        "day.jpg",
        "masks/day.png",
        "masks/spare.png",
    ]


@pytest.mark.parametrize(
    "values, dtype, rule",
    [
        ((0, 1), np.uint8, "0/1"),  # the common export that used to repair nothing
        ((0, 1), np.uint16, "0/1"),
        ((0, 255), np.uint8, ""),
        ((0, 65535), np.uint16, ""),
        ((3, 250), np.uint8, ""),  # a lossy-saved white-on-black mask
    ],
)
def test_one_binarisation_rule_takes_0_1_masks_and_says_so(tmp_path, values, dtype, rule):
    truth = hole(40, 48)
    arr = np.where(truth, values[1], values[0]).astype(dtype)[:, :, None]
    path = tmp_path / "m.png"
    path.write_bytes(encode_png(arr))
    got, applied = read_mask(path, (40, 48), 10**8)
    assert np.array_equal(got, truth)
    assert (rule in applied) if rule else applied == ""


@pytest.mark.integration
def test_a_0_1_mask_repairs_its_hole_and_an_empty_mask_is_its_own_status(model, tmp_path):
    photo(tmp_path / "src" / "ones.png")
    photo(tmp_path / "src" / "empty.png")
    mask_file(tmp_path / "masks" / "ones.png", high=1)
    (tmp_path / "masks" / "empty.png").write_bytes(encode_png(np.zeros((40, 48, 1), np.uint8)))
    args = [str(tmp_path / "src"), str(tmp_path / "out"), "--mask", str(tmp_path / "masks")]
    result = run_cli("repair", *args, "--model", str(model), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    rows = {Path(r["source"]).name: r for r in summary["files"]}
    assert rows["ones.png"]["status"] == "repaired" and "0/1" in rows["ones.png"]["detail"]
    assert rows["empty.png"]["status"] == "no hole"
    unchanged = read_image(tmp_path / "out" / "empty.png").pixels
    assert np.array_equal(unchanged, read_image(tmp_path / "src" / "empty.png").pixels)
    src = read_image(tmp_path / "src" / "ones.png").pixels
    out = read_image(tmp_path / "out" / "ones.png").pixels
    m = hole(40, 48)
    assert not np.array_equal(out[m], src[m]) and np.array_equal(out[~m], src[~m])


@pytest.mark.integration
@pytest.mark.parametrize("high", [255, 1])
def test_a_mask_of_all_hole_fails_saying_to_invert_it(model, tmp_path, high):
    """An inverted mask (black = hole) left nothing known: the net painted the whole image
    flat grey and called it repaired."""
    photo(tmp_path / "src" / "a.png")
    full = np.full((40, 48, 1), high, np.uint8)
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.png").write_bytes(encode_png(full))
    args = [str(tmp_path / "src"), str(tmp_path / "out"), "--mask", str(tmp_path / "masks")]
    result = run_cli("repair", *args, "--model", str(model), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    [row] = json.loads(result.stdout)["files"]
    assert row["status"] == "failed"
    assert "marks every pixel as hole" in row["detail"] and "invert" in row["detail"]
    assert not (tmp_path / "out" / "a.png").exists()


# --- pixels kept exactly, or the user is told -------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_pixel_fails_the_file_instead_of_blanking_it(grey, tmp_path, dtype, bad):
    import tifffile

    arr = np.linspace(0, 1, 40 * 48, dtype=dtype).reshape(40, 48)
    arr[5, 7] = bad
    (tmp_path / "src").mkdir()
    tifffile.imwrite(tmp_path / "src" / "scan.tif", arr)
    mask_file(tmp_path / "masks" / "scan.png")
    args = [str(tmp_path / "src"), str(tmp_path / "out"), "--mask", str(tmp_path / "masks")]
    result = run_cli("repair", *args, "--model", str(grey))
    assert result.returncode == 1
    assert "NaN or infinite" in result.stdout and not (tmp_path / "out" / "scan.tif").exists()


@pytest.mark.integration
def test_lossless_webp_stays_lossless_and_jpeg_is_named(model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(arr).save(src / "a.webp", lossless=True)
    Image.fromarray(arr).save(src / "b.jpg", quality=90)
    for name in ("a.png", "b.png"):
        mask_file(tmp_path / "masks" / name)
    args = [str(src), str(tmp_path / "out"), "--mask", str(tmp_path / "masks"), "--json"]
    result = run_cli("repair", *args, "--model", str(model))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {Path(r["source"]).name: r for r in json.loads(result.stdout)["files"]}
    assert "known pixels re-encoded (.jpg): mean change " in rows["b.jpg"]["detail"]
    m = hole(40, 48)
    webp = read_image(tmp_path / "out" / "a.webp").pixels
    assert np.array_equal(webp[~m], arr[~m])
    exact = run_cli("repair", *args, "--model", str(model), "--format", "png")
    assert exact.returncode == 0, exact.stdout + exact.stderr
    decoded = read_image(src / "b.jpg").pixels
    assert np.array_equal(read_image(tmp_path / "out" / "b.png").pixels[~m], decoded[~m])


@pytest.mark.integration
def test_16_bit_grey_alpha_keeps_depth_and_alpha(grey, tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 65536, (40, 48, 2), dtype=np.uint16)
    (tmp_path / "la16.png").write_bytes(encode_png(arr))
    out = tmp_path / "out.png"
    args = [str(tmp_path / "la16.png"), str(out), "--mask", str(mask_file(tmp_path / "m.png"))]
    result = run_cli("repair", *args, "--model", str(grey))
    assert result.returncode == 0, result.stdout + result.stderr
    back = decode_png(out.read_bytes())
    m = hole(40, 48)
    assert back.dtype == np.uint16 and back.shape == (40, 48, 2)
    assert np.array_equal(back[:, :, 1], arr[:, :, 1])
    assert np.array_equal(back[:, :, 0][~m], arr[:, :, 0][~m])


@pytest.mark.integration
def test_16_bit_into_a_format_that_cannot_hold_it_fails_before_computing(model, tmp_path):
    arr = np.random.default_rng(2).integers(0, 65536, (40, 48, 3), dtype=np.uint16)
    (tmp_path / "deep.png").write_bytes(encode_png(arr))
    args = [str(tmp_path / "deep.png"), str(tmp_path / "deep.jpg"), "--model", str(model)]
    result = run_cli("repair", *args, "--mask", str(mask_file(tmp_path / "m.png")))
    assert result.returncode == 1 and "cannot hold 16-bit" in result.stdout
    assert not (tmp_path / "deep.jpg").exists()


@pytest.mark.parametrize("suffix, width", [(".jpg", 65_536), (".jpeg", 70_000), (".webp", 16_384)])
def test_a_size_the_output_format_cannot_hold_fails_before_computing(
    model, tmp_path, suffix, width
):
    """JPEG holds at most 65,535 px a side and WebP 16,383: such an image used to be
    repaired whole and fail in the encoder, at the very end."""
    from gan_dist.repair.files import repair_files
    from gan_dist.repair.model_file import load_model

    Image.fromarray(np.zeros((2, width, 3), np.uint8) + 90).save(tmp_path / "wide.png")
    Image.fromarray(np.full((2, width), 255, np.uint8)).save(tmp_path / "m.png")
    (job,) = plan(tmp_path / "wide.png", tmp_path / f"out{suffix}", tmp_path / "m.png")
    (result,) = repair_files(lambda: load_model(str(model)), [job], 32, 8, 4, False)
    assert result.status == "failed" and f"cannot hold {width}x2 px" in result.detail
    assert result.seconds < 5 and not (tmp_path / f"out{suffix}").exists()


# --- one file never stops a folder; every file is named whole ---------------------------------


@pytest.mark.integration
def test_odd_files_are_rows_and_the_folder_goes_on(model, tmp_path):
    src = tmp_path / "a-rather-long-folder-name-that-a-table-would-cut" / "src"
    masks = tmp_path / "m"
    photo(src / "ok.png")
    Image.fromarray(np.zeros((1, 3000, 3), np.uint8) + 40).save(src / "line.png")  # 3000x1
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(src / "tiny.png")
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(src / "big.png")  # over --max-pixels
    mask_file(masks / "ok.png")
    for name, (h, w) in {"line.png": (1, 3000), "tiny.png": (2, 2), "big.png": (60, 60)}.items():
        holes = np.full((h, w, 1), 255, np.uint8)
        holes[0, 0] = 0  # one known pixel: a mask of all hole is refused
        (masks / name).write_bytes(encode_png(holes))
    args = [str(src), str(tmp_path / "out"), "--mask", str(masks), "--max-pixels", "3000"]
    result = run_cli("repair", *args, "--model", str(model))
    assert result.returncode == 1, result.stdout + result.stderr  # big.png failed
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("ok.png", "line.png", "tiny.png"):
        (row,) = [ln for ln in lines if str(src / name) in ln]  # the whole path, uncut
        assert "repaired" in row, row
    (row,) = [ln for ln in lines if str(src / "big.png") in ln]
    assert "failed" in row and "3,000 pixel limit" in row
    assert "3 repaired, 1 failed, 0 skipped" in result.stdout


@pytest.mark.integration
def test_every_table_names_each_cell_whole_outside_a_terminal():
    """`models list`, `data pack` and `repair` print through the same consoles: in a SLURM
    log or a pipe, neither a long file name nor a header may be cut to fit 80 columns."""
    import subprocess
    import sys

    code = (
        "from rich.table import Table\n"
        "from gan_dist.cli._common import out\n"
        "t = Table('registered model name', 'latest version', 'aliases', 'description')\n"
        "t.add_row('/data/big/' + 'x' * 120 + '/broken.png', '12', 'champion', 'y' * 90)\n"
        "out.print(t)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    for whole in ("/data/big/" + "x" * 120 + "/broken.png", "registered model name", "y" * 90):
        assert whole in done.stdout
    assert "…" not in done.stdout


@pytest.mark.integration
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint32, np.float64])
def test_float_and_wide_tiffs_come_back_in_their_own_type_with_known_values_exact(
    grey, tmp_path, dtype
):
    import tifffile

    rng = np.random.default_rng(5)
    if np.dtype(dtype).kind == "f":
        arr = rng.normal(0, 1000, (40, 48)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        arr = rng.integers(max(info.min, -(2**20)), min(info.max, 2**24), (40, 48)).astype(dtype)
    tifffile.imwrite(tmp_path / "scan.tif", arr)
    out = tmp_path / "out.tif"
    args = [str(tmp_path / "scan.tif"), str(out), "--mask", str(mask_file(tmp_path / "m.png"))]
    result = run_cli("repair", *args, "--model", str(grey))
    assert result.returncode == 0, result.stdout + result.stderr
    back = tifffile.imread(out)
    m = hole(40, 48)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert np.array_equal(back[~m], arr[~m])
    assert arr.min() <= back[m].min() and back[m].max() <= arr.max()


@pytest.mark.integration
def test_a_multi_page_tiff_fails_instead_of_losing_pages(grey, tmp_path):
    import tifffile

    pages = np.random.default_rng(6).integers(0, 65535, (3, 40, 48), dtype=np.uint16)
    with tifffile.TiffWriter(tmp_path / "stack.tif") as stack:
        for page in pages:
            stack.write(page, photometric="minisblack")
    args = [str(tmp_path / "stack.tif"), str(tmp_path / "out.tif")]
    result = run_cli(
        "repair", *args, "--mask", str(mask_file(tmp_path / "m.png")), "--model", str(grey)
    )
    assert result.returncode == 1 and "3 pages" in result.stdout
    assert not (tmp_path / "out.tif").exists()


def test_format_and_an_output_suffix_that_disagree_are_refused(tmp_path):
    with pytest.raises(GanDistError, match="--format png but OUTPUT"):
        plan(photo(tmp_path / "a.jpg"), tmp_path / "b.jpg", None, "png")


@pytest.mark.integration
def test_an_empty_mask_writes_the_image_unchanged_over_an_older_output(model, tmp_path):
    src = photo(tmp_path / "a.png")
    out = tmp_path / "out.png"
    photo(out, value=200)  # an older output
    (tmp_path / "m.png").write_bytes(encode_png(np.zeros((40, 48, 1), np.uint8)))
    args = [str(src), str(out), "--mask", str(tmp_path / "m.png"), "--overwrite", "--json"]
    result = run_cli("repair", *args, "--model", str(model))
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(result.stdout)["files"]
    assert row["status"] == "no hole"
    assert np.array_equal(read_image(out).pixels, read_image(src).pixels)


def test_a_float_tiff_bomb_is_refused_before_it_is_decoded(tmp_path):
    """A 600 kB file claiming a 12000x12000 float page: refused on its header, not after
    decoding 576 MB to look for NaN."""
    import resource

    import tifffile

    from gan_dist.data.images import probe

    path = tmp_path / "bomb.tif"
    tiles = (np.zeros((1024, 1024), np.float32) for _ in range(144))
    tifffile.imwrite(
        path, tiles, shape=(12000, 12000), dtype=np.float32, tile=(1024, 1024), compression="zlib"
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(GanDistError, match=r"too large \(12000x12000 px"):
        probe(path, 1_000_000)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"peak RSS grew {grown_mb:.0f} MB"


@pytest.mark.integration
@pytest.mark.parametrize("role", ["image", "mask"])
def test_a_one_bit_min_is_white_tiff_is_read(grey, tmp_path, role):
    """tifffile writes bool pages as min-is-white 1-bit (the fax layout): read as 0/255,
    inverted, as image and as mask."""
    import tifffile

    bits = np.zeros((40, 48), bool)
    bits[10:20, 16:28] = True
    image, mask = tmp_path / "scan.tif", tmp_path / "mask.tif"
    if role == "image":
        tifffile.imwrite(image, bits)
        tifffile.imwrite(mask, hole(40, 48).astype(np.uint8) * 255)
    else:
        tifffile.imwrite(image, np.full((40, 48), 128, np.uint8))
        tifffile.imwrite(mask, ~hole(40, 48))  # stored as min-is-white: true pixels read black
    assert read_image(image if role == "image" else mask).pixels.dtype == np.uint8
    out = tmp_path / "out" / "scan.tif"
    result = run_cli("repair", str(image), str(out), "--model", str(grey), "--mask", str(mask))
    assert result.returncode == 0, result.stdout + result.stderr
    back = read_image(out).pixels[:, :, 0]
    known = ~hole(40, 48)
    expected = np.where(bits, 0, 255) if role == "image" else np.full((40, 48), 128)
    assert np.array_equal(back[known], expected[known])


# --- what a file says about its picture survives its repair ----------------------------------


@functools.cache
def srgb() -> bytes:
    """An sRGB profile, made once (a profile made records the second it was made)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def camera_exif(orientation: int = 1):
    """EXIF as a camera writes it: make and model in IFD0, the date taken in the Exif IFD."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "EOS 5D", orientation
    exif.get_ifd(0x8769)[0x9003] = "2021:06:05 14:03:02"  # DateTimeOriginal
    return exif


def astronaut(h: int = 96, w: int = 128) -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()[100 : 100 + h, 150 : 150 + w]


def repaired(model: Path, image: Path, out: Path, mask: Path):
    from gan_dist.repair.files import repair_files
    from gan_dist.repair.model_file import load_model

    (job,) = plan(image, out, mask)
    (result,) = repair_files(lambda: load_model(str(model)), [job], 32, 8, 4, False)
    assert result.status == "repaired", result.detail
    return result


def test_a_jpeg_keeps_its_exif_profile_quality_and_subsampling(model, tmp_path):
    """The reported case: a q100 4:2:2 JPEG with EXIF (camera, date taken) and an ICC
    profile came back q95 4:2:0 with neither, and without a word on its known pixels."""
    from PIL import JpegImagePlugin

    arr = astronaut(96, 128)
    source = tmp_path / "photo.jpg"
    Image.fromarray(arr).save(
        source, quality=100, subsampling=1, exif=camera_exif(6), icc_profile=srgb(), dpi=(300, 300)
    )
    mask = mask_file(tmp_path / "m.png", 128, 96)  # the picture turned: 96 wide, 128 high
    result = repaired(model, source, tmp_path / "out.jpg", mask)
    with Image.open(source) as before, Image.open(tmp_path / "out.jpg") as after:
        assert after.info["icc_profile"] == srgb()
        assert JpegImagePlugin.get_sampling(after) == 1  # 4:2:2, as it came
        assert after.quantization == before.quantization  # its quality, as it came
        assert after.info["dpi"] == (300, 300)
        exif = after.getexif()
        assert (exif[0x010F], exif[0x0110]) == ("Canon", "EOS 5D")
        assert exif.get_ifd(0x8769)[0x9003] == "2021:06:05 14:03:02"
        assert exif.get(0x0112, 1) == 1  # the pixels were turned on reading
        assert after.size == (96, 128)
    change = result.detail.split("known pixels re-encoded (.jpg): mean change ")[1]
    mean, most = float(change.split(" levels")[0]), int(change.split("max ")[1].split(" ")[0])
    decoded, written = read_image(source).pixels, read_image(tmp_path / "out.jpg").pixels
    known = ~hole(128, 96)
    diff = np.abs(decoded.astype(int) - written)[known]
    assert mean == pytest.approx(diff.mean(), abs=0.01) and most == diff.max()
    assert mean < 1.0  # its own tables: q95 4:2:0 moved them 1.1 levels on average


@pytest.mark.parametrize(
    "source, output",
    [
        ("a.png", "out.png"),
        ("a16.png", "out.png"),
        ("a.webp", "out.webp"),
        ("a.jpg", "out.png"),
        ("a.jpg", "out.tif"),
        ("a.tif", "out.png"),
        ("a.tif", "out.jpg"),
        ("a.png", "out.jpg"),
        ("a.bmp", "out.bmp"),
        ("a.jpg", "out.bmp"),
    ],
)
def test_what_a_file_says_about_its_picture_survives_in_every_format(
    model, tmp_path, source, output
):
    """Colour profile, EXIF (less an applied orientation) and resolution, in whatever terms
    the output format holds them: PNG chunks, JPEG and WebP segments, TIFF tags, BMP's
    resolution. What the output cannot hold is named."""
    import tifffile

    arr = astronaut(40, 48)
    path = tmp_path / source
    icc, exif = srgb(), camera_exif()
    if source == "a16.png":
        from PIL import PngImagePlugin

        tmp = tmp_path / "eight.png"
        Image.fromarray(arr).save(tmp, icc_profile=icc, exif=exif, dpi=(300, 300))
        chunks = tmp.read_bytes()[33:].split(b"IDAT")[0][:-4]  # its metadata chunks, as made
        deep = encode_png(arr.astype(np.uint16) * 257)
        path.write_bytes(deep[:33] + chunks + deep[33:])
        assert PngImagePlugin.PngImageFile(path).info["icc_profile"] == icc
    elif source.endswith(".tif"):
        tifffile.imwrite(
            path,
            arr,
            photometric="rgb",
            iccprofile=icc,
            resolution=(300, 300),
            resolutionunit=2,
            extratags=[(271, "s", 0, "Canon", True), (272, "s", 0, "EOS 5D", True)],
        )
    elif source.endswith(".bmp"):
        Image.fromarray(arr).save(path, dpi=(300, 300))
    else:
        options = {"lossless": True} if source.endswith(".webp") else {}
        Image.fromarray(arr).save(path, icc_profile=icc, exif=exif, dpi=(300, 300), **options)
    result = repaired(model, path, tmp_path / output, mask_file(tmp_path / "m.png"))
    out = tmp_path / output
    lost = [n for n in result.detail.split("; ") if "not kept" in n or "dropped" in n]
    if output.endswith(".tif"):
        with tifffile.TiffFile(out) as tif:
            page = tif.pages[0]
            assert page.iccprofile == icc
            assert page.resolution == pytest.approx((300, 300), abs=0.01)
            assert page.tags.valueof(271) == "Canon" and page.tags.valueof(272) == "EOS 5D"
        assert lost == [], result.detail
        return
    with Image.open(out) as im:
        if output.endswith(".bmp"):  # a resolution is all BMP holds; the rest is named
            assert im.info["dpi"] == pytest.approx((300, 300), abs=0.5)
            held = (
                lost == []
                if source.endswith(".bmp")
                else lost == ["colour profile, EXIF not kept (.bmp cannot hold it)"]
            )
            assert held, result.detail
            return
        assert im.info.get("icc_profile") == icc
        made = im.getexif()
        assert (made.get(0x010F), made.get(0x0110)) == ("Canon", "EOS 5D")
        if not source.endswith(".tif"):
            assert made.get_ifd(0x8769).get(0x9003) == "2021:06:05 14:03:02"
        if not output.endswith(".webp"):  # WebP holds no resolution (nor did its source)
            assert im.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    assert lost == [], result.detail


def test_a_colour_profile_that_no_longer_fits_the_pixels_is_dropped_and_said(model, tmp_path):
    """A CMYK JPEG is repaired as RGB: its CMYK profile would tell a colour-managed viewer
    to read the RGB samples as inks."""
    cmyk_profile = b"\0" * 16 + b"CMYK" + b"\0" * 108
    arr = astronaut(40, 48)
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "inks.jpg", icc_profile=cmyk_profile)
    result = repaired(
        model, tmp_path / "inks.jpg", tmp_path / "out.png", mask_file(tmp_path / "m.png")
    )
    assert "CMYK colour profile dropped: the pixels are 3-channel" in result.detail
    with Image.open(tmp_path / "out.png") as im:
        assert "icc_profile" not in im.info


def test_png_text_survives_a_second_repair(model, tmp_path):
    """A repaired DICOM's PNG says what its levels stand for; repairing it again (another
    hole) must not lose that."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("gan-dist:values", '{"values": [-1024.0, 3071.0]}')
    info.add_itxt("Title", "naïve ☃")
    Image.fromarray(astronaut(40, 48)).save(tmp_path / "a.png", pnginfo=info)
    repaired(model, tmp_path / "a.png", tmp_path / "out.png", mask_file(tmp_path / "m.png"))
    with Image.open(tmp_path / "out.png") as im:
        assert im.text == {"gan-dist:values": '{"values": [-1024.0, 3071.0]}', "Title": "naïve ☃"}


def test_the_served_model_keeps_what_a_jpeg_says_about_itself(model, tmp_path):
    import io

    from gan_dist.repair.files import repair_bytes
    from gan_dist.repair.model_file import load_model

    buf = io.BytesIO()
    Image.fromarray(astronaut(40, 48)).save(buf, "JPEG", exif=camera_exif(), icc_profile=srgb())
    mask = mask_file(tmp_path / "m.png").read_bytes()
    result, data = repair_bytes(load_model(str(model)), buf.getvalue(), mask, tile=32, overlap=8)
    assert result.status == "repaired", result.detail
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["icc_profile"] == srgb() and im.getexif()[0x010F] == "Canon"


def test_exif_too_long_for_a_jpeg_is_named_instead_of_failing_the_write(model, tmp_path):
    """A PNG's EXIF may be any size; a JPEG's APP1 segment holds 64 kB, and Pillow refused
    the whole file at the very end."""
    exif = camera_exif()
    exif[0x010E] = "x" * 70_000  # ImageDescription
    Image.fromarray(astronaut(40, 48)).save(tmp_path / "a.png", exif=exif, icc_profile=srgb())
    result = repaired(
        model, tmp_path / "a.png", tmp_path / "out.jpg", mask_file(tmp_path / "m.png")
    )
    assert "EXIF of 70," in result.detail and "not kept (a JPEG holds 64 kB)" in result.detail
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.info["icc_profile"] == srgb() and "exif" not in im.info
