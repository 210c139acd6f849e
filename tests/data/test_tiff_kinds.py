"""Every TIFF colour model and sample type a user can hand `repair` is repaired as what it
shows and written back as it was stored (hostile pass of issue 15, Build 6): palette and CMYK
pages are converted to RGB and say so, alpha survives float pages, signed samples never wrap,
min-is-white grey and associated alpha are stored as they came, and colour models that would
be read as the wrong colours are refused by name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from gan_dist.core.errors import GanDistError
from gan_dist.data.images import ImageReadError, probe, raw_from_levels, read_image
from gan_dist.repair.files import Job, plan, read_mask, repair_files
from gan_dist.repair.model_file import load_model
from support import gradient16, make_model


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return load_model(str(make_model(tmp_path_factory.mktemp("model"))))


def box_mask(folder: Path, h: int, w: int) -> tuple[Path, np.ndarray]:
    hole = np.zeros((h, w), bool)
    hole[h // 4 : h // 2, w // 3 : w // 2] = True
    path = folder / "mask.tif"
    tifffile.imwrite(path, hole.astype(np.uint8) * 255)
    return path, hole


def repaired(net, image: Path, out: Path, mask: Path):
    [result] = repair_files(lambda: net, [Job(image, out, mask)], 64, 16, 4, False)
    assert result.status == "repaired", result.detail
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        for tag in page.tags:  # large values are read lazily: read them while it is open
            _ = tag.value
        return result, page.asarray(), page


def zero_strip(path: Path, index: int) -> None:
    """Overwrites strip `index` of a TIFF with zeros: undecodable for zlib."""
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[index], tif.pages[0].databytecounts[index]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(data))


def agrees_with_probe(path: Path) -> None:
    """What the header promises (pack plans a folder's depth from it) is what is read."""
    width, height, channels, depth = probe(path)
    picture = read_image(path)
    assert picture.pixels.shape == (height, width, channels)
    assert picture.bit_depth == depth


@pytest.mark.parametrize("depth", [8, 16])
def test_a_palette_tiff_is_repaired_in_its_colours_not_its_indices(net, tmp_path, depth):
    """It was repaired as grey indices and written back as a grey image."""
    h, w = 64, 96
    index = (np.arange(w)[None, :] // 12 + np.arange(h)[:, None] // 16).astype(np.uint8) % 8
    colormap = np.zeros((3, 256), np.uint16)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (3, 8)) * 257 if depth == 8 else rng.integers(0, 65536, (3, 8))
    colormap[:, :8] = colours
    image = tmp_path / "map.tif"
    tifffile.imwrite(image, index, photometric="palette", colormap=colormap)
    agrees_with_probe(image)
    mask, hole = box_mask(tmp_path, h, w)

    result, out, _ = repaired(net, image, tmp_path / "out.tif", mask)

    rgb = np.moveaxis(colours[:, index], 0, -1)
    rgb = rgb // 257 if depth == 8 else rgb
    assert out.shape == (h, w, 3) and out.dtype == (np.uint8 if depth == 8 else np.uint16)
    assert np.array_equal(out[~hole], rgb[~hole])
    assert "palette converted to RGB" in result.detail


@pytest.mark.parametrize("alpha", [False, True])
def test_a_cmyk_tiff_becomes_rgb_and_its_alpha_stays_alpha(net, tmp_path, alpha):
    """CMYK came out as RGBA with the black ink as alpha."""
    h, w = 64, 80
    inks = (gradient16(h, w, 5 if alpha else 4, seed=3) >> 8).astype(np.uint8)
    image = tmp_path / "print.tif"
    extra = ["unassalpha"] if alpha else None
    tifffile.imwrite(image, inks, photometric="separated", extrasamples=extra)
    agrees_with_probe(image)
    mask, hole = box_mask(tmp_path, h, w)

    result, out, _ = repaired(net, image, tmp_path / "out.tif", mask)

    paper = 255.0 - inks[:, :, :4]
    rgb = np.round(paper[:, :, :3] * paper[:, :, 3:] / 255).astype(np.uint8)
    assert out.shape == (h, w, 4 if alpha else 3)
    assert np.array_equal(out[..., :3][~hole], rgb[~hole])
    if alpha:
        assert np.array_equal(out[..., 3], inks[..., 4])
    assert "CMYK converted to RGB" in result.detail


def test_a_float_rgba_tiff_keeps_its_alpha_and_its_known_values(net, tmp_path):
    """The alpha sample of a float (or 32-bit) page was dropped without a word."""
    h, w = 64, 80
    values = gradient16(h, w, 4, seed=5).astype(np.float32) / 1000.0 - 20.0
    image = tmp_path / "float.tif"
    tifffile.imwrite(image, values, photometric="rgb", extrasamples=["unassalpha"])
    mask, hole = box_mask(tmp_path, h, w)

    result, out, page = repaired(net, image, tmp_path / "out.tif", mask)

    assert result.size == f"{w}x{h} float32"  # the file's type, not the 16-bit working scale
    assert out.shape == (h, w, 4) and out.dtype == np.float32
    assert np.array_equal(out[..., 3], values[..., 3])
    assert np.array_equal(out[~hole], values[~hole])
    assert page.extrasamples == (2,)


def test_signed_samples_never_wrap_and_one_byte_data_stays_8_bit(net, tmp_path):
    """Repaired values above 32767 wrapped to negatives in a non-negative int16 scan, and
    int8 data became 16-bit levels 0..127 (nearly black to the net) while probe said 8-bit."""
    reference = np.array([[0, 100], [20000, 32767]], np.int16)
    top = np.full((2, 2), 65535, np.uint16)
    assert (raw_from_levels(top, reference, min_is_white=False) == 32767).all()

    small = (gradient16(40, 50, 1)[:, :, 0] >> 9).astype(np.int8)  # 0..127
    image = tmp_path / "int8.tif"
    tifffile.imwrite(image, small)
    agrees_with_probe(image)
    assert read_image(image).pixels.dtype == np.uint8
    mask, hole = box_mask(tmp_path, 40, 50)
    _, out, _ = repaired(net, image, tmp_path / "out.tif", mask)
    assert out.dtype == np.int8 and (out >= 0).all()
    assert np.array_equal(out[~hole], small[~hole])


@pytest.mark.parametrize("kind", ["1-bit fax", "float"])
def test_min_is_white_is_stored_as_it_came(net, tmp_path, kind):
    """Written back min-is-black with every known sample inverted (shown the same, stored
    differently)."""
    h, w = 64, 64
    if kind == "float":
        samples = gradient16(h, w, 1, seed=7)[:, :, 0].astype(np.float32) / 7.0
    else:
        samples = gradient16(h, w, 1, seed=7)[:, :, 0] > 30000
    image = tmp_path / "scan.tif"
    tifffile.imwrite(image, samples, photometric="miniswhite")
    mask, hole = box_mask(tmp_path, h, w)

    result, out, page = repaired(net, image, tmp_path / "out.tif", mask)

    assert page.photometric == 0
    assert ("1-bit read as 8-bit 0/255" in result.detail) == (kind == "1-bit fax")
    stored = samples.astype(np.uint8) * 255 if kind == "1-bit fax" else samples
    assert np.array_equal(out[~hole], stored[~hole])


@pytest.mark.parametrize("layout", [{"rowsperstrip": 8}, {"compression": "zlib"}])
def test_associated_alpha_stays_associated(net, tmp_path, layout):
    """Premultiplied (associated) alpha was written back as unassociated."""
    rgba = (gradient16(64, 64, 4, seed=1) >> 8).astype(np.uint8)
    image = tmp_path / "rgba.tif"
    tifffile.imwrite(image, rgba, photometric="rgb", extrasamples=["assocalpha"], **layout)
    mask, hole = box_mask(tmp_path, 64, 64)
    _, out, page = repaired(net, image, tmp_path / "out.tif", mask)
    assert page.extrasamples == (1,)
    assert np.array_equal(out[~hole], rgba[~hole])


@pytest.mark.parametrize(
    ("photometric", "options", "name"),
    [("cielab", {}, "CIELAB"), ("ycbcr", {"subsampling": (1, 1)}, "YCBCR")],
)
def test_colour_models_read_as_wrong_colours_are_refused_by_name(
    tmp_path, photometric, options, name
):
    """Lab values and uncompressed YCbCr were repaired as if they were RGB."""
    image = tmp_path / "odd.tif"
    tifffile.imwrite(
        image, (gradient16(32, 32, 3) >> 8).astype(np.uint8), photometric=photometric, **options
    )
    with pytest.raises(ImageReadError, match=f"colour model {name} is not supported"):
        read_image(image)


def test_an_output_folder_given_with_a_trailing_slash_is_a_folder(tmp_path):
    """`repair in.tif newdir/` wrote a file named `newdir`."""
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((8, 8), np.uint8))
    (job,) = plan(image, f"{tmp_path / 'newdir'}{os.sep}", None)
    assert job.target == tmp_path / "newdir" / "in.tif"


def test_an_output_that_is_a_symlink_is_refused_not_written_through(tmp_path):
    """`repair in.png out.png --overwrite` replaced the file the link out.png points to."""
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((8, 8), np.uint8))
    elsewhere = tmp_path / "precious.tif"
    elsewhere.write_bytes(b"keep me")
    os.symlink(elsewhere, tmp_path / "out.tif")
    with pytest.raises(GanDistError, match="through the symbolic link"):
        plan(image, tmp_path / "out.tif", None)
    assert elsewhere.read_bytes() == b"keep me"


def test_a_mask_of_several_pages_is_refused(net, tmp_path):
    """The first page was used without a word."""
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, np.zeros((3, 32, 32), np.uint8), photometric="minisblack")
    [result] = repair_files(lambda: net, [Job(image, tmp_path / "o.tif", mask)], 64, 16, 4, False)
    assert result.status == "failed" and "3 pages" in result.detail


def test_a_mask_of_another_size_is_refused_before_it_is_read(net, tmp_path):
    """A streamed TIFF mask was scanned to the end before its size was compared: a wrong
    mask cost a pass over the file, and a corrupt one gave the codec's error instead."""
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.uint8))
    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, np.zeros((65, 64), np.uint8), rowsperstrip=5, compression="zlib")
    zero_strip(mask, 3)
    [result] = repair_files(lambda: net, [Job(image, tmp_path / "o.tif", mask)], 64, 16, 4, False)
    assert result.status == "failed"
    assert result.detail == f"mask {mask}: 64x65, the image is 64x64"


def test_reversed_bit_order_is_decoded_not_memory_mapped(net, tmp_path):
    """An uncompressed FillOrder=2 page was memory-mapped as stored: 55,381 of 59,200 known
    pixels came out with their bits reversed."""
    from PIL import Image, TiffImagePlugin

    stored = (gradient16(120, 100, 1)[:, :, 0] >> 8).astype(np.uint8)
    image = tmp_path / "reversed.tif"
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[266] = 2  # FillOrder: lowest bit first (tifffile will not write it)
    Image.fromarray(stored).save(image, tiffinfo=tags)
    mask, hole = box_mask(tmp_path, 120, 100)
    _, out, _ = repaired(net, image, tmp_path / "out.tif", mask)
    assert np.array_equal(out[~hole], tifffile.imread(image)[~hole])


def test_a_float64_page_spanning_its_whole_range_repairs_to_finite_values(net, tmp_path):
    """hi - lo overflowed to inf: 200 hole pixels came out NaN or inf, status repaired."""
    values = np.linspace(-1.0, 1.0, 64 * 64).reshape(64, 64) * 1.7e308
    image = tmp_path / "wide.tif"
    tifffile.imwrite(image, values)
    mask, hole = box_mask(tmp_path, 64, 64)
    _, out, _ = repaired(net, image, tmp_path / "out.tif", mask)
    assert np.isfinite(out).all()
    assert np.array_equal(out[~hole], values[~hole])


@pytest.mark.parametrize(
    ("kind", "values", "holes"),
    [
        ("float all 1.0", np.ones((32, 32), np.float32), 32 * 32),
        ("float 0 and 0.01", np.where(np.eye(32) > 0, 0.01, 0).astype(np.float32), 0),
        ("float 0..1", np.where(np.eye(32) > 0, 0.9, 0.2).astype(np.float32), 32),
        ("int8 0 and 100", np.where(np.eye(32) > 0, 100, 0).astype(np.int8), 32),
        ("int16 0 and 1", np.eye(32, dtype=np.int16), 32),
    ],
)
def test_masks_of_any_sample_type_follow_the_same_rule(tmp_path, kind, values, holes):
    """Float and signed masks were rescaled from their own range first: a mask of all 1.0
    marked nothing, 0.01 on black marked holes, int8 100 marked nothing."""
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, values)
    mask, _ = read_mask(path, (32, 32), 10**8)
    assert int(mask.sum()) == holes, kind


def test_a_broken_streamed_mask_is_named_as_the_mask(net, tmp_path):
    """A truncated TIFF mask was reported as a corrupt image."""
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((600, 64), np.uint8))
    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, np.full((600, 64), 255, np.uint8), rowsperstrip=16, compression="zlib")
    zero_strip(mask, 20)
    [result] = repair_files(lambda: net, [Job(image, tmp_path / "o.tif", mask)], 64, 16, 4, False)
    assert result.status == "failed"
    assert result.detail.startswith(f"mask {mask}: corrupt or unreadable TIFF"), result.detail


def test_extra_samples_beyond_alpha_fail_the_file_instead_of_being_dropped(net, tmp_path):
    """RGBA plus a second extra sample came out RGBA, the extra one deleted, exit 0."""
    samples = (gradient16(48, 64, 5) >> 8).astype(np.uint8)
    image = tmp_path / "rgba2.tif"
    tifffile.imwrite(image, samples, photometric="rgb", extrasamples=["unassalpha", "unspecified"])
    mask, _ = box_mask(tmp_path, 48, 64)
    [result] = repair_files(lambda: net, [Job(image, tmp_path / "o.tif", mask)], 64, 16, 4, False)
    assert result.status == "failed" and "2 extra samples" in result.detail
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])  # streamed, and decoded whole
def test_a_scan_keeps_what_it_says_about_itself(net, tmp_path, dtype):
    """Resolution (600 dpi became 1 with no unit), colour profile, description, orientation
    and provenance were dropped from the repaired TIFF; text beyond ASCII failed it."""
    samples = gradient16(64, 48, 3, seed=9).astype(dtype)
    image = tmp_path / "scan.tif"
    profile = bytes(range(256)) * 2
    tifffile.imwrite(
        image, samples, photometric="rgb", rowsperstrip=16, resolution=(600, 600),
        resolutionunit="INCH", description="Tafel 12, Rückseite".encode(), iccprofile=profile,
        extratags=[(274, "H", 1, 6, True), (315, "s", 0, "Zoë Scanner".encode(), True),
                   (33432, "s", 0, "(c) Archive", True)],
        metadata=None,
    )  # fmt: skip
    mask, _ = box_mask(tmp_path, 64, 48)
    _, _, page = repaired(net, image, tmp_path / "out.tif", mask)
    assert page.resolution == (600.0, 600.0) and page.resolutionunit == 2
    assert page.description == "Tafel 12, Rückseite" and page.iccprofile == profile
    assert page.tags.valueof(274) == 6  # shown turned, as the original is
    assert page.tags.valueof(315) == "Zoë Scanner"  # UTF-8: tifffile refused it after the repair
    assert page.tags.valueof(33432) == "(c) Archive"


def test_a_linked_input_file_keeps_its_own_name_in_the_output_folder(tmp_path):
    """`repair link.tif out/` wrote out/TARGET.tif, while a folder walk keeps link names."""
    target = tmp_path / "scan-0001.tif"
    tifffile.imwrite(target, np.zeros((8, 8), np.uint8))
    os.symlink(target, tmp_path / "plate-12.tif")
    (job,) = plan(tmp_path / "plate-12.tif", f"{tmp_path / 'out'}/", None)
    assert job.target == tmp_path / "out" / "plate-12.tif"


def test_a_jpeg_tiff_decoded_to_rgb_says_so(net, tmp_path):
    image = tmp_path / "jpeg.tif"
    rgb = (gradient16(64, 64, 3) >> 8).astype(np.uint8)
    tifffile.imwrite(image, rgb, photometric="ycbcr", compression="jpeg")
    mask, _ = box_mask(tmp_path, 64, 64)
    result, _, page = repaired(net, image, tmp_path / "out.tif", mask)
    assert "YCbCr (JPEG) decoded to RGB" in result.detail and page.photometric == 2
