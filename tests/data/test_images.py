from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from gan_dist.data.images import (
    ImageReadError,
    decode_png,
    encode_png,
    probe,
    read_image,
    resize,
    write_png_atomic,
)
from support import blank_dicom, gradient16, save_pil


def test_16bit_grey_and_colour_png_are_read_bit_exact(tmp_path):
    for channels in (1, 3):
        arr = gradient16(40, 50, channels, seed=channels)
        path = tmp_path / f"deep{channels}.png"
        write_png_atomic(path, arr)
        pic = read_image(path)
        assert pic.pixels.dtype == np.uint16
        np.testing.assert_array_equal(pic.pixels, arr)
        assert probe(path)[2:] == (channels, 16)


def test_pillow_would_have_cut_16bit_colour_to_8bit(tmp_path):
    """The trap read_image avoids: Pillow opens a 48-bit PNG as 8-bit RGB without a word."""
    path = tmp_path / "deep.png"
    write_png_atomic(path, gradient16(8, 8, 3))
    assert Image.open(path).mode == "RGB"
    assert read_image(path).pixels.dtype == np.uint16


def test_16bit_tiff_grey_and_rgb(tmp_path):
    grey, rgb = gradient16(30, 20, 1), gradient16(30, 20, 3, seed=4)
    tifffile.imwrite(tmp_path / "g.tif", grey[:, :, 0])
    tifffile.imwrite(tmp_path / "c.tiff", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "g.tif").pixels, grey)
    np.testing.assert_array_equal(read_image(tmp_path / "c.tiff").pixels, rgb)


def test_conversions_are_reported(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = save_pil(tmp_path / "a.png", np.dstack([rgb, np.zeros((20, 30), np.uint8)]))
    cmyk = save_pil(tmp_path / "c.jpg", rgb, mode="CMYK")
    pal = save_pil(tmp_path / "p.png", rgb, mode="P")
    for path, note in (
        (rgba, "alpha channel dropped"),
        (cmyk, "CMYK converted to RGB"),
        (pal, "palette converted to RGB"),
    ):
        pic = read_image(path)
        assert pic.pixels.shape == (20, 30, 3) and pic.pixels.dtype == np.uint8
        assert note in pic.notes
    np.testing.assert_array_equal(read_image(rgba).pixels, rgb)


@pytest.mark.parametrize(("suffix", "fmt"), [(".webp", "WEBP"), (".bmp", "BMP")])
def test_webp_and_bmp_are_read(tmp_path, suffix, fmt):
    rgb = np.random.default_rng(0).integers(0, 256, (24, 36, 3), dtype=np.uint8)
    path = save_pil(
        tmp_path / f"x{suffix}", rgb, format=fmt, **({"lossless": True} if fmt == "WEBP" else {})
    )
    np.testing.assert_array_equal(read_image(path).pixels, rgb)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    pic = read_image(path)
    assert pic.pixels.shape == (40, 20, 3)
    assert "EXIF orientation applied" in pic.notes
    assert pic.pixels[:15].mean() > 200 and pic.pixels[25:].mean() < 50  # white now on top


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello"), "not a recognised image"),
        (lambda p: Image.new("1", (10_001, 10_001)).save(p, format="PNG"), "too large"),
    ],
)
def test_unusable_files_raise_with_a_reason(tmp_path, make, reason):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(ImageReadError, match=reason):
        read_image(path)


def test_truncated_jpeg_is_reported_as_corrupt(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 99, np.uint8)).save(buf, format="JPEG")
    path = tmp_path / "t.jpg"
    path.write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        read_image(path)


def test_dicom_rescale_and_monochrome1(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    ds = blank_dicom(tmp_path / "x.dcm", "1.2.840.10008.5.1.4.1.1.2")
    raw = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    ds.PixelData = raw.tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)

    pic = read_image(tmp_path / "x.dcm")
    assert pic.pixels.dtype == np.uint16 and pic.pixels.shape == (2, 2, 1)
    assert "MONOCHROME1 inverted" in pic.notes
    assert pic.extra == {"dicom_min": -1024.0, "dicom_max": 2 * 4095 - 1024.0}
    # inverted: the brightest raw value is now the darkest, linear in between
    assert pic.pixels[1, 1, 0] == 0 and pic.pixels[0, 0, 0] == 65535
    # the mapping gives the modality values back, inversion included, and says so
    assert (pic.mapping.first, pic.mapping.last) == (2 * 4095 - 1024, -1024)
    assert np.array_equal(pic.mapping.values(pic.pixels[:, :, 0]), raw * 2.0 - 1024)
    assert "values 7166..-1024 mapped to 0..65535" in pic.mapping.describe()
    real = pydicom.data.get_testdata_file("CT_small.dcm")
    ct = read_image(__import__("pathlib").Path(real))
    assert ct.pixels.dtype == np.uint16 and ct.pixels.shape == (128, 128, 1)


def test_png_codec_round_trip_and_16bit_resize(tmp_path):
    arr = gradient16(33, 47, 3)
    np.testing.assert_array_equal(decode_png(encode_png(arr)), arr)
    view = arr[:, :, 1:2]  # a non-contiguous slice encodes too
    np.testing.assert_array_equal(decode_png(encode_png(view)), view)
    small = resize(arr, 20, 10)
    assert small.shape == (10, 20, 3) and small.dtype == np.uint16
    # not quantised to 8-bit steps
    assert np.any(small % 257 != 0)


def test_dicom_units_are_claimed_only_where_the_file_gives_them():
    """A CT without rescale tags was labelled HU (hostile pass): its stored values are not
    known to be Hounsfield units."""
    from pydicom.dataset import Dataset

    from gan_dist.data.images import _dicom_units

    def ds(**tags) -> Dataset:
        d = Dataset()
        for key, value in tags.items():
            setattr(d, key, value)
        return d

    assert _dicom_units(ds(Modality="CT", RescaleIntercept=-1024, RescaleSlope=1)) == "HU"
    assert _dicom_units(ds(Modality="CT")) == ""
    assert _dicom_units(ds(Modality="MR", RescaleIntercept=0, RescaleSlope=1)) == ""
    assert _dicom_units(ds(Modality="CR", RescaleType="OD", RescaleIntercept=0)) == "OD"
    assert _dicom_units(ds(Modality="CT", RescaleType="US", RescaleIntercept=0)) == ""  # said so


def test_an_enhanced_ct_is_rescaled_by_its_functional_groups(tmp_path):
    """An enhanced multi-frame CT keeps its rescale in its functional groups: it was read as
    stored values, labelled modality values, with no unit (hostile pass 2)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from support import blank_dicom

    ds = blank_dicom(tmp_path / "e.dcm", "1.2.840.10008.5.1.4.1.1.2.1")  # Enhanced CT
    raw = np.array([[[0, 1000], [2000, 3999]], [[5, 5], [5, 5]]], dtype=np.uint16)
    ds.Modality = "CT"
    ds.NumberOfFrames, (ds.Rows, ds.Columns) = 2, raw.shape[1:]
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = -1024, 1, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PixelData = raw.tobytes()
    ds.save_as(tmp_path / "e.dcm", enforce_file_format=True)

    pic = read_image(tmp_path / "e.dcm")
    assert (pic.mapping.first, pic.mapping.last, pic.mapping.units) == (-1024, 2975, "HU")
    assert np.array_equal(pic.mapping.values(pic.pixels[:, :, 0]), raw[0] - 1024.0)
