"""TIFFs repaired a band at a time: every layout a scanner or library writes gives the same
pixels as the whole-image path, memory does not grow with the image, and a file that breaks
half-way leaves no output behind."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from gan_dist.data.images import encode_png, read_image
from gan_dist.data.metadata import Storage
from gan_dist.data.tiff_stream import CLASSIC_LIMIT, needs_bigtiff, open_tiff, write_tiff
from gan_dist.repair.files import Job, read_mask, repair_files
from gan_dist.repair.model_file import load_model
from gan_dist.repair.tiles import repair_array
from support import cli_command, gradient16, make_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"))


def holes(h: int, w: int) -> np.ndarray:
    """A box, a thin diagonal stroke and a hole touching the bottom-right corner."""
    mask = np.zeros((h, w), bool)
    mask[h // 5 : h // 5 + 30, w // 4 : w // 4 + 40] = True
    for i in range(min(h, w) - 10):
        mask[i, i : i + 3] = True
    mask[h - 12 :, w - 9 :] = True
    return mask


def repair_one(model, job: Job, **kw):
    """One file through `repair_files` (64 px tiles, 16 px overlap, batches of 4); `model` is
    a model folder or a loaded model."""
    net = load_model(str(model)) if isinstance(model, Path) else model
    [result] = repair_files(lambda: net, [job], 64, 16, 4, False, **kw)
    return result


def repair(model: Path, image: Path, mask: Path, out: Path) -> np.ndarray:
    result = repair_one(model, Job(image, out, mask))
    assert result.status == "repaired", result.detail
    return tifffile.imread(out)


LAYOUTS = {
    "strips of 16 rows, zlib": {"rowsperstrip": 16, "compression": "zlib"},
    "tiles of 64 px, lzw": {"tile": (64, 64), "compression": "lzw"},
    "uncompressed, one piece": {},
    "uncompressed planar": {"planarconfig": "separate"},
    "big-endian strips": {"byteorder": ">", "rowsperstrip": 7},
}


CASES = [
    (layout, kind)
    for layout in LAYOUTS
    for kind in ("rgb8", "grey16", "grey16+alpha")
    if not (kind == "grey16" and "planarconfig" in LAYOUTS[layout])  # one sample: no planes
]


@pytest.mark.parametrize(("layout", "kind"), CASES)
def test_streamed_repair_matches_the_whole_image(model, tmp_path, layout, kind):
    h, w = 150, 230
    channels = 2 if kind.endswith("alpha") else (3 if kind == "rgb8" else 1)
    arr = gradient16(h, w, channels, seed=4)
    if kind == "rgb8":
        arr = (arr >> 8).astype(np.uint8)
    options = dict(LAYOUTS[layout])
    extra = ["unassalpha"] if channels == 2 else None
    photometric = "rgb" if channels == 3 else "minisblack"
    plane = arr[:, :, 0] if channels == 1 else arr
    if options.get("planarconfig") == "separate":
        plane = np.moveaxis(plane, -1, 0)
    image = tmp_path / "scan.tif"
    tifffile.imwrite(image, plane, photometric=photometric, extrasamples=extra, **options)
    assert open_tiff(image, 10**8) is not None, "this layout must be streamed"
    mask = holes(h, w)
    mask_path = tmp_path / "mask.tif"
    tifffile.imwrite(mask_path, mask.astype(np.uint8) * 255, rowsperstrip=5, compression="zlib")

    streamed = repair(model, image, mask_path, tmp_path / "out" / "scan.tif")

    colour = arr[:, :, : 3 if channels == 3 else 1]
    whole = repair_array(load_model(str(model)), colour, mask, 64, 16, 4)
    expected = np.dstack([whole, arr[:, :, 1]]) if channels == 2 else whole
    assert np.array_equal(streamed.reshape(h, w, channels), expected)
    assert not np.array_equal(whole, colour), "the net must have changed the holes"


def test_a_min_is_white_scan_reads_inverted_as_the_whole_image_path_does(model, tmp_path):
    arr = gradient16(96, 128, 1, seed=2)[:, :, 0]
    image = tmp_path / "mw.tif"
    tifffile.imwrite(image, arr, photometric="miniswhite", rowsperstrip=8, compression="zlib")
    mask_path = tmp_path / "m.png"
    mask_path.write_bytes(encode_png((holes(96, 128) * 255).astype(np.uint8)[:, :, None]))
    streamed = repair(model, image, mask_path, tmp_path / "a" / "mw.tif")
    result = repair_one(model, Job(image, tmp_path / "mw.png", mask_path))
    assert result.status == "repaired", result.detail
    shown = read_image(tmp_path / "mw.png").pixels[:, :, 0]  # PNG has no min-is-white
    assert np.array_equal(read_image(tmp_path / "a" / "mw.tif").pixels[:, :, 0], shown)
    # stored as it came (it was written back min-is-black with every sample inverted)
    assert tifffile.TiffFile(tmp_path / "a" / "mw.tif").pages[0].photometric == 0
    known = ~holes(96, 128)
    assert np.array_equal(streamed[known], arr[known])
    assert np.array_equal(streamed, 65535 - shown)


def test_a_tiff_mask_is_read_by_the_same_rule_as_any_other(tmp_path):
    from contextlib import ExitStack

    mask = holes(80, 90)
    cases = {
        "white.tif": mask.astype(np.uint8) * 255,
        "zero-one.tif": mask.astype(np.uint8),
        "deep.tif": mask.astype(np.uint16) * 40000,
        "colour.tif": np.dstack([mask.astype(np.uint8) * 200] * 3),
    }
    for name, values in cases.items():
        path = tmp_path / name
        tifffile.imwrite(path, values, rowsperstrip=3, compression="zlib")
        whole, rule = read_mask(path, (80, 90), 10**8)
        with ExitStack() as stack:
            lazy, lazy_rule = read_mask(path, (80, 90), 10**8, stack)
            assert type(lazy).__name__ == "TiffMask", name
            assert np.array_equal(lazy[:, :], whole) and np.array_equal(whole, mask), name
            assert lazy_rule == rule and lazy.mean() == pytest.approx(mask.mean()), name
            assert np.array_equal(lazy[10:30, 5:70], mask[10:30, 5:70]), name


def test_layouts_that_cannot_be_read_in_parts_are_read_whole(tmp_path):
    arr = gradient16(1100, 40, 1)[:, :, 0]
    cases = {
        "one compressed strip": (arr, {"compression": "zlib"}),
        "float": (arr.astype(np.float32), {}),
        "two pages": (np.stack([arr, arr]), {}),
        "palette": (
            (arr >> 8).astype(np.uint8),
            {"photometric": "palette", "colormap": np.zeros((3, 256), np.uint16)},
        ),
    }
    for name, (values, options) in cases.items():
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, values, **options)
        assert open_tiff(path, 10**8) is None, name


def peak_numpy_memory(net, folder: Path, height: int, width: int = 1200) -> int:
    """Bytes of peak traced (numpy and Python) memory while repairing a tiled 16-bit RGB
    TIFF of this size with a box and a stroke across its whole width."""
    gradient = np.linspace(0, 65535, width, dtype=np.uint16)[None, :, None]
    image = folder / f"{height}.tif"
    pixels = np.broadcast_to(gradient, (height, width, 3))
    tifffile.imwrite(image, pixels, photometric="rgb", tile=(256, 256), compression="zlib")
    mask = np.zeros((height, width), np.uint8)
    mask[height // 2 : height // 2 + 60, 500:600] = 255
    mask[100:103, :] = 255
    mask_path = folder / f"{height}-mask.tif"
    tifffile.imwrite(mask_path, mask, rowsperstrip=64, compression="zlib")
    out = folder / "out" / f"{height}.tif"
    tracemalloc.start()
    try:
        result = repair_one(net, Job(image, out, mask_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status == "repaired", result.detail
    known = mask == 0
    assert np.array_equal(read_image(out).pixels[known], pixels[known])
    return peak


def test_streamed_repair_memory_does_not_grow_with_the_image(model, tmp_path):
    """Rows are read, repaired and written a band at a time: an image 8 times taller
    (55 MiB) costs about the same memory as the short one, a fraction of its size."""
    net = load_model(str(model))
    peak_numpy_memory(net, tmp_path, 300)  # imports (zarr, scipy) are not the repair's
    short, tall = (peak_numpy_memory(net, tmp_path, h) for h in (1000, 8000))
    image = 8000 * 1200 * 3 * 2
    assert tall < 1.5 * short, f"{tall / 2**20:.1f} MiB vs {short / 2**20:.1f} MiB"
    assert tall < image / 4, f"{tall / 2**20:.1f} MiB for a {image / 2**20:.0f} MiB image"


def test_a_tiff_broken_half_way_leaves_no_output(model, tmp_path):
    h, w = 512, 300
    image = tmp_path / "broken.tif"
    tifffile.imwrite(image, gradient16(h, w, 1)[:, :, 0], rowsperstrip=32, compression="zlib")
    with tifffile.TiffFile(image) as tif:
        offset, count = tif.pages[0].dataoffsets[12], tif.pages[0].databytecounts[12]
    data = bytearray(image.read_bytes())
    data[offset : offset + count] = b"\x00" * count  # strip 12 (rows 384-415) undecodable
    image.write_bytes(bytes(data))
    mask_path = tmp_path / "m.png"
    full = np.zeros((h, w, 1), np.uint8)
    full[::40, :] = 255
    mask_path.write_bytes(encode_png(full))
    out = tmp_path / "out"
    result = repair_one(model, Job(image, out / "broken.tif", mask_path))
    assert result.status == "failed"
    # said as the whole-image path says it, not as the codec's raw error
    assert result.detail.startswith("corrupt or unreadable TIFF at rows "), result.detail
    assert not out.exists() or list(out.iterdir()) == []


def test_an_unchanged_streamed_tiff_is_written_whole(model, tmp_path):
    arr = gradient16(300, 200, 3)
    image = tmp_path / "clean.tif"
    tifffile.imwrite(image, arr, photometric="rgb", rowsperstrip=10)
    mask_path = tmp_path / "empty.tif"
    tifffile.imwrite(mask_path, np.zeros((300, 200), np.uint8))
    out = tmp_path / "out" / "clean.tif"
    result = repair_one(model, Job(image, out, mask_path))
    assert result.status == "no hole"
    assert np.array_equal(tifffile.imread(out), arr)


def test_a_long_repair_reports_its_rows(model, tmp_path):
    arr = gradient16(700, 90, 1)
    image = tmp_path / "tall.tif"
    tifffile.imwrite(image, arr[:, :, 0], rowsperstrip=16, compression="zlib")
    mask_path = tmp_path / "m.tif"
    tifffile.imwrite(mask_path, holes(700, 90).astype(np.uint8) * 255)
    seen: list[tuple[int, int]] = []
    result = repair_one(
        model,
        Job(image, tmp_path / "out" / "tall.tif", mask_path),
        on_rows=lambda done, height: seen.append((done, height)),
    )
    assert result.status == "repaired", result.detail
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == 700 and {h for _, h in seen} == {700}
    assert len(seen) > 5


def test_a_truncated_uncompressed_scan_fails_alone(model, tmp_path):
    """A scanner's file cut short (the copy stopped): that file fails, naming no pixel as
    repaired, and the next file in the folder is still repaired."""
    folder = tmp_path / "scans"
    folder.mkdir()
    tifffile.imwrite(folder / "a-cut.tif", gradient16(400, 300, 1)[:, :, 0])
    data = (folder / "a-cut.tif").read_bytes()
    (folder / "a-cut.tif").write_bytes(data[: len(data) // 2])
    tifffile.imwrite(folder / "b-fine.tif", gradient16(60, 70, 1)[:, :, 0], rowsperstrip=8)
    masks = tmp_path / "masks"
    masks.mkdir()
    for name, (h, w) in {"a-cut": (400, 300), "b-fine": (60, 70)}.items():
        tifffile.imwrite(masks / f"{name}.tif", holes(h, w).astype(np.uint8) * 255)
    out = tmp_path / "out"
    results = repair_files(
        lambda: load_model(str(model)),
        [Job(folder / n, out / n, masks / n) for n in ("a-cut.tif", "b-fine.tif")],
        64,
        16,
        4,
        False,
    )
    assert [r.status for r in results] == ["failed", "repaired"], results
    assert sorted(p.name for p in out.iterdir()) == ["b-fine.tif"]


def test_a_full_disk_mid_write_leaves_nothing(model, tmp_path, small_disk):
    """The output is written as it is repaired; when the disk fills half-way, no partial
    file is left that could pass for a finished one."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 65536, (1500, 1500), dtype=np.uint16)  # 4.3 MiB, incompressible
    image = tmp_path / "noise.tif"
    tifffile.imwrite(image, noise, rowsperstrip=32, compression="zlib")
    mask_path = tmp_path / "m.tif"
    tifffile.imwrite(mask_path, holes(1500, 1500).astype(np.uint8) * 255)
    (small_disk / "filler").write_bytes(b"\0" * (6 << 20))
    result = repair_one(model, Job(image, small_disk / "noise.tif", mask_path))
    assert result.status == "failed" and "space" in result.detail.lower(), result.detail
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_tiff_mask_of_another_size_names_both_sizes(model, tmp_path):
    image = tmp_path / "scan.tif"
    tifffile.imwrite(image, gradient16(80, 90, 1)[:, :, 0], rowsperstrip=8)
    mask_path = tmp_path / "m.tif"
    tifffile.imwrite(mask_path, holes(81, 90).astype(np.uint8) * 255, rowsperstrip=8)
    result = repair_one(model, Job(image, tmp_path / "o" / "s.tif", mask_path))
    assert result.status == "failed"
    assert f"mask {mask_path}: 90x81, the image is 90x80" in result.detail
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
def test_sigterm_mid_write_leaves_no_partial_file(model, tmp_path):
    """A SLURM time limit (SIGTERM) while a scan is written: the half-written file is
    removed, as on Ctrl-C, and the exit status says a signal stopped it."""
    import os
    import signal
    import subprocess
    import time

    h, w = 6000, 1500
    image = tmp_path / "scan.tif"
    tifffile.imwrite(image, gradient16(h, w, 1)[:, :, 0], rowsperstrip=64, compression="zlib")
    mask = np.zeros((h, w), np.uint8)
    mask[:, ::97] = 255  # a hole in every tile: the repair takes a while
    tifffile.imwrite(tmp_path / "mask.tif", mask, rowsperstrip=64)
    out = tmp_path / "out"
    cmd = [*cli_command(), "repair", str(image), str(out / "scan.tif")]
    cmd += ["--model", str(model), "--mask", str(tmp_path / "mask.tif"), "--tile", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.exists() and any(out.iterdir())) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    assert any(p.name.endswith(".partial") for p in out.iterdir()), "no write in progress"
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "shape, dtype, big",
    [
        ((70_000, 70_000, 1), np.uint8, True),  # 4.9 GB
        ((30_000, 30_000, 3), np.uint16, True),  # 5.4 GB
        ((46_000, 46_000, 1), np.uint16, False),  # 4.23 GB: its headroom still fits
        ((46_300, 46_300, 1), np.uint16, True),  # 4.29 GB: only zlib's worst case passes
        ((24_000, 24_000, 4), np.uint16, True),  # 4.6 GB: colour and alpha, 16-bit
        ((20_000, 20_000, 3), np.uint8, False),  # 1.2 GB
    ],
)
def test_bigtiff_is_decided_from_the_uncompressed_size_before_writing(shape, dtype, big):
    assert needs_bigtiff(shape, dtype, Storage()) is big
    assert CLASSIC_LIMIT == 2**32


def test_a_tiff_that_could_pass_the_classic_limit_is_written_as_bigtiff(tmp_path):
    """The limit lowered to 100 kB: a 240x200 RGB 16-bit page (288 kB) is written BigTIFF,
    one under it stays classic; both read back the same."""
    arr = gradient16(240, 200, 3)
    for name, limit, big in (("big.tif", 100_000, True), ("small.tif", 10**7, False)):
        with open(tmp_path / name, "wb") as fh:
            assert write_tiff(fh, arr.shape, arr.dtype, iter([arr]), Storage(), limit) is big
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.is_bigtiff is big and np.array_equal(tif.asarray(), arr)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])  # streamed, and read whole
def test_a_bigtiff_comes_back_a_bigtiff(model, tmp_path, dtype):
    arr = gradient16(150, 120, 1)[:, :, 0].astype(dtype)
    image = tmp_path / "scan.tif"
    tifffile.imwrite(image, arr, bigtiff=True, rowsperstrip=32, compression="zlib")
    if dtype == np.uint16:
        assert open_tiff(image, 10**8) is not None
    mask_path = tmp_path / "m.png"
    mask_path.write_bytes(encode_png((holes(150, 120) * 255).astype(np.uint8)[:, :, None]))
    for name, source in (("big.tif", image), ("classic.tif", tmp_path / "classic.tif")):
        if name == "classic.tif":
            tifffile.imwrite(source, arr, rowsperstrip=32)
        result = repair_one(model, Job(source, tmp_path / "out" / name, mask_path))
        assert result.status == "repaired", result.detail
        assert "BigTIFF" not in result.detail  # nothing new to say: it came as one
        with tifffile.TiffFile(tmp_path / "out" / name) as tif:
            assert tif.is_bigtiff is (name == "big.tif")
            back = tif.asarray()
        known = ~holes(150, 120)
        assert back.dtype == arr.dtype and np.array_equal(back[known], arr[known])
