"""Tiled repair and its files: sizes, depths, blending, and never losing an input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from gan_dist.core.precision import inference_precision
from gan_dist.data.images import decode_png, encode_png, read_image
from gan_dist.repair.files import plan, repair_files
from gan_dist.repair.model_file import load_model
from gan_dist.repair.tiles import band_work, repair_array, repair_rows
from support import blank_dicom, gradient16, hole, make_model, run_cli


@pytest.fixture(scope="module")
def inpaint(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("inpaint"))


@pytest.mark.parametrize("shape", [(37, 53, 3), (300, 17, 3), (64, 64, 3), (130, 97, 1)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_any_size_and_depth_keeps_known_pixels_bit_exact(inpaint, shape, dtype):
    model = load_model(str(inpaint))
    rng = np.random.default_rng(1)
    img = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    mask = hole(*shape[:2])
    out = repair_array(model, img, mask, tile=32, overlap=8)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert np.array_equal(out[~mask], img[~mask])
    assert not np.array_equal(out[mask], img[mask])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_bf16_repair_keeps_known_pixels_exact_and_holes_within_a_level(inpaint, dtype):
    rng = np.random.default_rng(4)
    img = rng.integers(0, np.iinfo(dtype).max, (70, 90, 3), dtype=dtype, endpoint=True)
    mask = hole(70, 90)
    out = {
        p: repair_array(load_model(str(inpaint)).use_precision(p), img, mask, tile=32, overlap=8)
        for p in ("fp32", "bf16")
    }
    for p, repaired in out.items():
        assert repaired.dtype == dtype and np.array_equal(repaired[~mask], img[~mask]), p
    levels = np.abs(out["bf16"].astype(np.int64) - out["fp32"]) * 255 / np.iinfo(dtype).max
    assert 0 < levels[mask].max() <= 2  # bf16 did run, and barely moved the output
    # auto: bf16 only where it is within an 8-bit level, so never for 16-bit images
    auto = repair_array(load_model(str(inpaint)).use_precision("auto"), img, mask, 32, 8)
    expected = (
        "bf16" if dtype == np.uint8 and inference_precision("auto", "cpu") == "bf16" else "fp32"
    )
    assert np.array_equal(auto, out[expected])


@pytest.mark.integration
def test_cli_precision_is_checked_and_reported(inpaint, tmp_path):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 90).save(tmp_path / "a.png")
    Image.fromarray(hole(40, 40).astype(np.uint8) * 255).save(tmp_path / "m.png")
    args = ["repair", str(tmp_path / "a.png"), str(tmp_path / "out.png"), "--model", str(inpaint)]
    bad = run_cli(*args, "--mask", str(tmp_path / "m.png"), "--precision", "fp16")
    assert bad.returncode == 1 and "--precision fp16: use auto, bf16 or fp32" in bad.stderr
    assert not (tmp_path / "out.png").exists()
    ok = run_cli(*args, "--mask", str(tmp_path / "m.png"), "--precision", "fp32")
    assert ok.returncode == 0 and "1 repaired, 0 failed, 0 skipped (cpu, fp32)" in ok.stdout


def test_tiles_blend_to_the_identity_of_an_identity_model(tmp_path):
    """A restoration model whose correction is still zero returns its input; tiled, any
    band, edge or blending mistake would show as changed pixels."""
    folder = make_model(tmp_path / "id", "model.composite=false", train=False)
    model = load_model(str(folder))
    img = np.random.default_rng(2).integers(0, 65536, (203, 141, 3), dtype=np.uint16)
    out = repair_array(model, img, None, tile=48, overlap=12, batch=3)
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 1  # float32 rounding


def test_tiled_and_untiled_agree_away_from_nothing(inpaint):
    """With tiles as large as the image, one tile does it all; smaller tiles must give a
    result close to it (the net sees less context, blending hides the borders)."""
    model = load_model(str(inpaint))
    img = np.asarray(Image.open(_photo()).convert("RGB").resize((96, 96)))
    mask = hole(96, 96)
    whole = repair_array(model, img, mask, tile=96, overlap=0).astype(float)
    tiled = repair_array(model, img, mask, tile=48, overlap=16).astype(float)
    assert np.abs(whole - tiled)[mask].mean() < 12  # of 255


def test_a_noise_model_repairs_the_same_pixels_every_time_and_its_tiles_agree(tmp_path):
    """model.noise draws its noise from each pixel's position in the whole image: the same
    file gives the same repair, and overlapping tiles feed the net the same noise."""
    model = load_model(str(make_model(tmp_path / "m", "model.noise=true")))
    img = np.asarray(Image.open(_photo()).convert("RGB").resize((96, 96)))
    mask = hole(96, 96)
    whole = repair_array(model, img, mask, tile=96, overlap=0)
    assert np.array_equal(whole, repair_array(model, img, mask, tile=96, overlap=0))
    assert np.array_equal(whole[~mask], img[~mask])
    tiled = repair_array(model, img, mask, tile=48, overlap=16).astype(float)
    # 0.06 of 255; tiles drawing their noise from their own corner instead: 0.7
    assert np.abs(whole.astype(float) - tiled)[mask].mean() < 0.3


def test_grey_images_through_an_rgb_model_stay_grey(inpaint):
    model = load_model(str(inpaint))
    img = gradient16(40, 40, channels=1)
    mask = hole(40, 40)
    out = repair_array(model, img, mask, tile=32, overlap=8)
    assert out.shape == (40, 40, 1) and out.dtype == np.uint16
    assert np.array_equal(out[~mask], img[~mask])


def test_rgb_into_a_grey_model_is_refused(tmp_path):
    model = load_model(str(make_model(tmp_path / "grey", "data.channels=1")))
    from gan_dist.core.errors import GanDistError

    with pytest.raises(GanDistError, match="1-channel"):
        repair_array(model, np.zeros((32, 32, 3), np.uint8), hole(32, 32))


@pytest.mark.parametrize(
    ("shape", "holes", "tile", "overlap"),
    [
        ((100, 300), [np.s_[10:20, 30:40], np.s_[70:90, 250:300]], 64, 16),
        ((70, 40), [np.s_[5:9, 5:9]], 64, 16),  # smaller than a tile
        ((133, 257), [np.s_[:, :]], 32, 8),
        ((133, 257), [], 32, 8),  # no hole: nothing to run
        ((64, 64), [np.s_[0:1, 63:64]], 256, 32),
    ],
)
@pytest.mark.parametrize("composite", [True, False])
def test_band_work_is_what_repair_runs_through_the_net(
    inpaint, tmp_path, shape, holes, tile, overlap, composite
):
    """The served model's time budget counts the pixels the net will run before any is
    run: band by band, exactly what `repair_rows` feeds the net (an inpainting model only
    its tiles with a hole pixel; a restoration model every tile)."""
    from gan_dist.repair.model_file import RepairModel

    folder = inpaint if composite else make_model(tmp_path, "model.composite=false")
    loaded = load_model(str(folder))
    seen: list[int] = []

    class Counted(RepairModel):
        def forward(self, images, masks, *args):
            seen.append(images.shape[0] * images.shape[2] * images.shape[3])
            return super().forward(images, masks, *args)

    model = Counted(loaded.net, loaded.spec, loaded.source)
    mask = np.zeros(shape, bool)
    for box in holes:
        mask[box] = True
    pixels = np.zeros((*shape, 3), np.uint8)
    bands = band_work(model, *shape, mask, tile, overlap)
    done = 0
    for top, rows in repair_rows(model, pixels, mask, tile, overlap):
        # what ran by the time a band is handed on is what band_work counted above it
        assert sum(seen) == sum(w for start, w in bands if start < top + len(rows))
        done = top + len(rows)
    assert done == shape[0]
    assert sum(seen) == sum(w for _, w in bands)
    assert (sum(seen) > 0) == (bool(holes) or not composite)


def _photo() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent / "astronaut.png"


@pytest.mark.integration
def test_cli_folder_repair_keeps_paths_depth_and_never_overwrites(inpaint, tmp_path):
    src, masks, out = tmp_path / "scans", tmp_path / "masks", tmp_path / "repaired"
    deep = gradient16(48, 40)
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "deep.png").write_bytes(encode_png(deep))
    Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 90).save(src / "flat.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src / "no-mask.png")
    for rel, (h, w) in {"a/b/deep.png": (48, 40), "flat.png": (40, 40)}.items():
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(hole(h, w).astype(np.uint8) * 255).save(masks / rel)
    (masks / "broken.png").write_bytes(encode_png(np.zeros((8, 8, 1), np.uint8)))
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}

    args = ["repair", str(src), str(out), "--model", str(inpaint), "--mask", str(masks)]
    result = run_cli(*args, "--tile", "32", "--overlap", "8")
    assert result.returncode == 1, result.stdout + result.stderr  # two files failed
    assert "2 repaired, 2 failed" in result.stdout
    assert "no mask found" in result.stdout
    repaired = decode_png((out / "a" / "b" / "deep.png").read_bytes())
    assert repaired.dtype == np.uint16 and repaired.shape == deep.shape
    m = hole(48, 40)
    assert np.array_equal(repaired[~m], deep[~m])
    assert read_image(out / "flat.jpg").pixels.shape == (40, 40, 3)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["deep.png", "flat.jpg"]
    assert before == {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}

    again = run_cli(*args)
    assert "exists (use --overwrite" in again.stdout
    assert run_cli("repair", str(src), str(src), "--model", str(inpaint)).returncode == 1
    inside = run_cli("repair", str(src), str(src / "out"), "--model", str(inpaint))
    assert inside.returncode == 1 and "inside INPUT" in inside.stderr
    assert before == {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}


@pytest.mark.integration
def test_a_finished_folder_is_skipped_without_loading_the_model(inpaint, tmp_path):
    src, masks, out = tmp_path / "photos", tmp_path / "masks", tmp_path / "repaired"
    for folder in (src, masks):
        folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 60).save(src / "a.png")
    Image.fromarray(hole(32, 32).astype(np.uint8) * 255).save(masks / "a.png")
    first = run_cli("repair", str(src), str(out), "--model", str(inpaint), "--mask", str(masks))
    assert first.returncode == 0, first.stdout + first.stderr
    written = (out / "a.png").read_bytes()

    gone = str(tmp_path / "no-such-model")
    again = run_cli("repair", str(src), str(out), "--model", gone, "--mask", str(masks))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 repaired, 0 failed, 1 skipped" in again.stdout
    forced = run_cli(
        "repair", str(src), str(out), "--model", gone, "--mask", str(masks), "--overwrite"
    )
    assert forced.returncode != 0 and "no-such-model" in forced.stderr
    assert "Traceback" not in forced.stderr
    assert (out / "a.png").read_bytes() == written


@pytest.mark.integration
def test_dicom_in_gives_16_bit_png_out(inpaint, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    ds = blank_dicom(tmp_path / "x.dcm", "1.2.840.10008.5.1.4.1.1.4")
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4000) + 7
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "scan.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "scan.dcm").pixel_array.shape == (64, 64)
    Image.fromarray(hole(64, 64).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    result = run_cli(
        "repair",
        str(tmp_path / "scan.dcm"),
        str(tmp_path / "out.png"),
        "--model",
        str(inpaint),
        "--mask",
        str(tmp_path / "mask.png"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = decode_png((tmp_path / "out.png").read_bytes())
    assert out.dtype == np.uint16 and out.shape == (64, 64, 1)


def dicom(
    path: Path,
    raw: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits: tuple[int, int] = (16, 16),
    rescale: tuple[float, float] | None = None,
    modality: str = "CT",
) -> Path:
    """A DICOM file of `raw` stored samples ((H, W) grey or (H, W, 3) RGB; signed when
    their dtype is), `bits` allocated and stored, and a (slope, intercept) rescale."""
    ds = blank_dicom(path, "1.2.840.10008.5.1.4.1.1.7")
    ds.Modality, ds.Rows, ds.Columns = modality, *raw.shape[:2]
    ds.SamplesPerPixel = 3 if raw.ndim == 3 else 1
    if raw.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits[0], bits[1], bits[1] - 1
    ds.PixelRepresentation = int(raw.dtype.kind == "i")
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = raw.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.integration
def test_dicom_modality_values_come_back_from_the_output_and_its_summary(inpaint, tmp_path):
    """Every DICOM kind is written as 16-bit levels of its own value range; the PNG's text
    chunks and the --json detail say how, and known pixels give back their modality values
    exactly. Two CT pixels worth -790 and 30 in two scans share one level, and still do."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.pixels import apply_modality_lut

    src, masks = tmp_path / "scans", tmp_path / "masks"
    src.mkdir()
    rng = np.random.default_rng(0)
    ramp = np.arange(48 * 40).reshape(48, 40)
    dicom(src / "ct_a.dcm", (ramp % 469).astype(np.uint16), rescale=(1, -1024))  # -1024..-556
    dicom(src / "ct_b.dcm", (ramp % 469 + 820).astype(np.uint16), rescale=(1, -1024))  # -204..264
    grid = rng.integers(0, 4096, (48, 40), dtype=np.uint16)
    dicom(src / "mono1.dcm", grid, "MONOCHROME1", (16, 12), (2, -1024))  # 12 bits stored in 16
    dicom(src / "signed.dcm", (ramp - 900).astype(np.int16), rescale=(0.5, 10.25), modality="MR")
    dicom(src / "eight.dcm", (ramp % 256).astype(np.uint8), bits=(8, 8), modality="OT")
    rgb = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    dicom(src / "rgb.dcm", rgb, "RGB", (8, 8), modality="US")
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (src / name).write_bytes(Path(pydicom.data.get_testdata_file(name)).read_bytes())
    masks.mkdir()
    for path in src.iterdir():
        h, w = pydicom.dcmread(path).pixel_array.shape[:2]
        Image.fromarray(hole(h, w).astype(np.uint8) * 255).save(masks / f"{path.stem}.png")

    result = run_cli(
        "repair",
        str(src),
        str(tmp_path / "out"),
        "--model",
        str(inpaint),
        "--mask",
        str(masks),
        "--json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {Path(r["source"]).stem: r for r in json.loads(result.stdout)["files"]}
    known_at = {}
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        truth = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        truth = truth if truth.ndim == 3 else truth[:, :, None]
        out = tmp_path / "out" / f"{path.stem}.png"
        levels = decode_png(out.read_bytes())
        text = Image.open(out).text
        record = json.loads(text["gan-dist:values"])
        assert record["levels"] == [0, 65535] and record["what"] == "DICOM modality values"
        first, last = record["values"]
        assert text["Description"] in rows[path.stem]["detail"]  # the summary says the same
        assert text["Description"].startswith(f"DICOM modality values {first:g}..{last:g}")
        values = first + (last - first) * levels.astype(np.float64) / 65535
        if "slope" in record:  # back onto the rescale's grid: exact
            slope, intercept = record["slope"], record["intercept"]
            values = intercept + slope * np.round((values - intercept) / slope)
        else:
            values = np.round(values)  # integer samples
        known = ~hole(*levels.shape[:2])
        assert np.array_equal(values[known], truth[known]), path.name
        known_at[path.stem] = (levels, values)
    assert rows["CT_small"]["detail"].count("HU mapped to 0..65535") == 1
    assert "MONOCHROME1 inverted" in rows["mono1"]["detail"]
    # the reported case: one level, two scans, two modality values
    (y, x) = np.argwhere(known_at["ct_a"][1][:, :, 0] == -790)[0]
    (v, u) = np.argwhere(known_at["ct_b"][1][:, :, 0] == 30)[0]
    assert known_at["ct_a"][0][y, x, 0] == known_at["ct_b"][0][v, u, 0]
    # a TIFF output says the same in its description
    (job,) = plan(src / "mono1.dcm", tmp_path / "mono1.tif", masks / "mono1.png")
    (done,) = repair_files(lambda: load_model(str(inpaint)), [job], 32, 8, 4, False)
    with tifffile.TiffFile(tmp_path / "mono1.tif") as tif:
        description = tif.pages[0].description
    assert done.status == "repaired" and description in done.detail
    assert description == Image.open(tmp_path / "out" / "mono1.png").text["Description"]


@pytest.mark.integration
def test_eval_scores_shards_and_folders_of_clean_images(inpaint, packed, photo_dir):
    on_shards = run_cli("eval", "--model", str(inpaint), "--data", str(packed), "--json")
    assert on_shards.returncode == 0, on_shards.stderr
    report = json.loads(on_shards.stdout)
    assert report["split"] == "val" and report["samples"] == 8
    assert 0 < report["ssim"] <= 1 and report["hole_psnr"] > 5
    on_folder = run_cli("eval", "--model", str(inpaint), "--data", str(photo_dir), "--json")
    assert on_folder.returncode == 0, on_folder.stderr
    assert json.loads(on_folder.stdout)["samples"] == len(list(photo_dir.iterdir()))
    assert json.loads(on_folder.stdout)["split"] is None  # a folder has no split
    table = run_cli("eval", "--model", str(inpaint), "--data", str(photo_dir), "--device", "cpu")
    assert table.returncode == 0, table.stderr
    assert "split" not in table.stdout  # it said "(train split)" of a folder of images
    assert "its biharmonic prefill alone" in table.stdout


@pytest.mark.integration
def test_eval_shows_what_the_net_adds_to_its_prefill(inpaint, packed, photo_dir):
    """Issue 25: hole PSNR read the same at every step, after fine-tuning and for a tiny
    plugin net, and nothing said whether the net added anything to its prefill. Eval scores
    the prefill alone on the same holes beside the model; an untrained net (a zero
    correction) scores exactly its prefill."""
    from gan_dist.repair.evaluate import evaluate_data
    from gan_dist.repair.model_file import load_model

    for data in (packed, photo_dir):
        report = json.loads(
            run_cli("eval", "--model", str(inpaint), "--data", str(data), "--json").stdout
        )
        assert report["prefill"]["kind"] == "biharmonic"
        assert report["prefill"]["hole_psnr"] != report["hole_psnr"]
        assert set(report["prefill"]) == {"kind", "psnr", "ssim", "ms_ssim", "hole_psnr",
                                          "hole_ssim", "hole_l1", "hole_swd"} - (
            set() if "ms_ssim" in report else {"ms_ssim"})  # fmt: skip
    untrained = load_model(str(make_model(photo_dir.parent / "zero", train=False)))
    metrics = evaluate_data(untrained, packed)
    assert metrics["prefill"]["hole_psnr"] == pytest.approx(metrics["hole_psnr"], abs=1e-4)
    none = load_model(str(make_model(photo_dir.parent / "none", "model.prefill=none")))
    assert "prefill" not in evaluate_data(none, packed)
    missing = run_cli("eval", "--model", str(inpaint), "--data", str(photo_dir / "nope"))
    assert missing.returncode == 1 and "nope" in missing.stderr


@pytest.mark.integration
@pytest.mark.parametrize("name", ["rgba.png", "la.png", "rgba16.png", "rgba.tif"])
def test_alpha_comes_back_untouched(inpaint, tmp_path, name):
    import tifffile

    rng = np.random.default_rng(3)
    deep = name.startswith("rgba16")
    dtype = np.uint16 if deep else np.uint8
    colour = 1 if name.startswith("la") else 3
    arr = rng.integers(0, np.iinfo(dtype).max, (40, 48, colour + 1), dtype=dtype, endpoint=True)
    path = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(path, arr, photometric="rgb", extrasamples=["unassalpha"])
    elif deep:
        path.write_bytes(encode_png(arr))
    else:
        Image.fromarray(arr, "RGBA" if colour == 3 else "LA").save(path)
    mask = hole(40, 48)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    out = tmp_path / "out" / name
    result = run_cli(
        "repair", str(path), str(out), "--model", str(inpaint), "--mask", str(tmp_path / "m.png")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    picture = read_image(out)
    assert picture.alpha is not None and np.array_equal(picture.alpha, arr[:, :, -1])
    assert picture.pixels.dtype == dtype and picture.channels == colour
    assert np.array_equal(picture.pixels[~mask], arr[:, :, :colour][~mask])


@pytest.mark.parametrize("prefill", ["biharmonic", "patchmatch", "patchmatch+biharmonic"])
def test_a_hole_larger_than_a_tile_shows_no_tile_borders(prefill, tmp_path):
    """Tiles whose edges cut through a hole used to fill their own part of it from the known
    pixels they saw, and disagreed where they were blended (a faint cross in large holes).
    The prefill is now solved once per hole: an untrained model (output = its prefill) gives
    the same pixels tiled and untiled, exemplars (issue 25) included."""
    folder = make_model(tmp_path / "m", f"model.prefill={prefill}", train=False)
    model = load_model(str(folder))
    img = np.asarray(Image.open(_photo()).convert("RGB").resize((160, 160)))
    mask = np.zeros((160, 160), bool)
    mask[30:130, 20:140] = True  # larger than the 64 px tiles, across their borders
    whole = repair_array(model, img, mask, tile=160, overlap=0).astype(int)
    tiled = repair_array(model, img, mask, tile=64, overlap=16).astype(int)
    assert np.abs(whole - tiled)[mask].max() <= 1  # float rounding only
