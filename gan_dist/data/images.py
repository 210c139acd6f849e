"""Reading and writing images without losing bits.

Everything inside gan-dist is a numpy array of shape (H, W, C), C in {1, 3}, dtype uint8 or
uint16. Pillow decodes most formats, but it silently reduces 16-bit colour PNGs to 8 bits, so
those go through imagecodecs; TIFF goes through tifffile (any depth, any channel count); DICOM
through the optional pydicom. Every reader reports what it had to change (alpha dropped, CMYK
converted) so the caller can tell the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gan_dist.core.errors import GanDistError
from gan_dist.core.files import write_bytes_atomic
from gan_dist.data.metadata import Storage

if TYPE_CHECKING:
    import numpy as np


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom"}
DEFAULT_MAX_PIXELS = 10_000 * 10_000


class ImageReadError(GanDistError):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


@dataclass(frozen=True)
class ValueMapping:
    """How a picture's levels stand for the values its file held, where a reader mapped
    those onto levels and the output keeps the levels (DICOM modality values, I- and F-mode
    images): value = first + (last - first) * level / top, for every sample. `first` is
    above `last` where the reader inverted the values (MONOCHROME1: level 0 is the largest).
    Written beside the levels (PNG text, TIFF description) so the values can be recovered."""

    what: str  # "DICOM modality values"
    first: float  # the value of level 0
    last: float  # the value of level `top`
    top: int  # 65535 or 255
    units: str = ""  # "HU" where the file says so
    # (slope, intercept) where every value is intercept + slope * an integer (a DICOM
    # rescale): rounding onto that grid recovers known values exactly
    grid: tuple[float, float] | None = None

    def values(self, levels: np.ndarray) -> np.ndarray:
        """float64 values of `levels` (any shape), on `grid` where there is one."""
        import numpy as np

        values = self.first + (self.last - self.first) * (levels.astype(np.float64) / self.top)
        if self.grid is not None:
            slope, intercept = self.grid
            values = intercept + slope * np.round((values - intercept) / slope)
        return values

    def describe(self) -> str:
        """One line for people and scripts, every number exact: `DICOM modality values
        -1024..3071 HU mapped to 0..65535: value = -1024 + 4095 * level / 65535, rounded to
        the nearest -1024 + 1 * k (rescale slope 1, intercept -1024)`."""
        units = f" {self.units}" if self.units else ""
        step = self.last - self.first
        sign = "-" if step < 0 else "+"
        text = (
            f"{self.what} {_exact(self.first)}..{_exact(self.last)}{units} mapped to "
            f"0..{self.top}: value = {_exact(self.first)} {sign} {_exact(abs(step))} * level "
            f"/ {self.top}"
        )
        if self.grid is not None:
            slope, intercept = (_exact(v) for v in self.grid)
            text += (
                f", rounded to the nearest {intercept} + {slope} * k (rescale slope {slope}, "
                f"intercept {intercept})"
            )
        return text

    def as_text(self) -> tuple[tuple[str, str], ...]:
        """PNG text chunks: `Description` (`describe`) and `gan-dist:values`, the same as
        JSON (`what`, `levels` [0, top], `values` [first, last], `units`, `slope`,
        `intercept`)."""
        import json

        record = {
            "what": self.what,
            "levels": [0, self.top],
            "values": [self.first, self.last],
            "units": self.units,
        }
        if self.grid is not None:
            record |= {"slope": self.grid[0], "intercept": self.grid[1]}
        return (("Description", self.describe()), ("gan-dist:values", json.dumps(record)))


def _exact(value: float) -> str:
    """A number as it round-trips: `-1024` for whole numbers, else Python's shortest repr."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(value)


@dataclass
class Picture:
    """Pixels plus what the reader had to do to them."""

    pixels: np.ndarray
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    alpha: np.ndarray | None = None  # (H, W), kept aside: training ignores it, repair restores it
    # the decoded values before they were mapped onto 16 bits (float or 32-bit TIFFs), so
    # that repair can write known pixels back exactly (see `raw_from_levels`)
    original: np.ndarray | None = None
    pages: int = 1  # pages (TIFF) or frames (DICOM) in the file; pixels come from the first
    storage: Storage = field(default_factory=lambda: Storage())
    # what the levels stand for, where the reader mapped values onto them (`_to_levels`, DICOM)
    mapping: ValueMapping | None = None

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype.itemsize == 2 else 8

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def suffix_of(data: bytes) -> str:
    """The file suffix of an image file's bytes, from its signature (magic number): .png,
    .jpg, .tif, .bmp, .webp or .dcm. Raises ImageReadError for anything else."""
    signatures = (
        (b"\x89PNG\r\n\x1a\n", ".png"),
        (b"\xff\xd8\xff", ".jpg"),
        (b"II*\x00", ".tif"),
        (b"MM\x00*", ".tif"),
        (b"II+\x00", ".tif"),  # BigTIFF
        (b"MM\x00+", ".tif"),
        (b"BM", ".bmp"),
    )
    for magic, suffix in signatures:
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[128:132] == b"DICM":
        return ".dcm"
    raise ImageReadError(
        "not a recognised image file (PNG, JPEG, TIFF, BMP, WebP or DICOM bytes expected)"
    )


def probe(
    path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, check_values: bool = True
) -> tuple[int, int, int, int]:
    """(width, height, channels, bit depth) from the header only; raises ImageReadError.

    Cheap enough to run over a whole folder first, so that size limits are enforced before
    any pixel is decoded and channel/bit-depth choices can be made for the whole set. The
    one exception, `check_values`: a float TIFF is decoded to refuse NaN or infinite
    values before its depth counts for a pack (a reader that decodes it anyway skips that).
    """
    _check_not_empty(path)
    suffix = path.suffix.lower()
    if suffix in (".dcm", ".dicom"):
        ds = _read_dicom(path, header_only=True)
        width, height = int(ds.Columns), int(ds.Rows)
        channels = 3 if int(getattr(ds, "SamplesPerPixel", 1)) == 3 else 1
        depth = 16 if int(getattr(ds, "BitsAllocated", 8)) > 8 else 8
    elif suffix in (".tif", ".tiff"):
        width, height, channels, depth = _probe_tiff(path, max_pixels, check_values)
    else:
        width, height, channels, depth = _probe_pillow(path)
    _check_size(width, height, max_pixels)
    return width, height, channels, depth


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(
            f"too large ({width}x{height} px, over the {max_pixels:,} pixel limit)"
        )


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode to (H, W, 1|3) uint8/uint16; raises ImageReadError with a reason."""
    probe(path, max_pixels, check_values=False)  # decoding checks them
    suffix = path.suffix.lower()
    if suffix in (".dcm", ".dicom"):
        return _dicom_picture(path)
    if suffix in (".tif", ".tiff"):
        return _tiff_picture(path)
    return _pillow_picture(path)


# --- Pillow formats ------------------------------------------------------------------------


def _check_not_empty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(f"cannot read: {exc.strerror}") from None
    if size == 0:
        raise ImageReadError("empty file (0 bytes)")


def _open_pillow(path: Path):
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our own limit is checked from the header instead
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError("not a recognised image (contents do not match any format)") from None
    except OSError as exc:
        raise ImageReadError(f"corrupt or truncated image header ({exc})") from None


def _png_deep_colour_type(path: Path) -> int | None:
    """The PNG colour type of a 16-bit PNG with colour or alpha (2: RGB, 4: grey + alpha,
    6: RGBA), the ones Pillow would silently cut to 8 bits; None for any other file."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    deep = head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 and head[24] == 16
    return head[25] if deep and head[25] in (2, 4, 6) else None


def _probe_pillow(path: Path) -> tuple[int, int, int, int]:
    with _open_pillow(path) as im:
        width, height = im.size
        mode, fmt = im.mode, im.format
    colour_type = _png_deep_colour_type(path) if fmt == "PNG" else None
    if colour_type is not None:
        return width, height, 1 if colour_type == 4 else 3, 16
    channels = 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
    depth = 16 if mode in ("I", "I;16", "I;16B", "I;16L", "F") else 8
    return width, height, channels, depth


def _pillow_picture(path: Path) -> Picture:
    """PNG (8-bit, or grey 16-bit), JPEG, WebP or BMP through Pillow: EXIF orientation
    applied, palette, CMYK and other colour models as RGB, alpha kept aside, and what the
    file says about its picture in `storage` (`metadata`)."""
    import numpy as np
    from PIL import ImageOps

    from gan_dist.data.metadata import jpeg_coding, pillow_storage, png_storage

    notes: list[str] = []
    im = _open_pillow(path)
    fmt = im.format
    try:
        if fmt == "PNG" and _png_deep_colour_type(path) is not None:
            return _deep_png_picture(path)
        im.load()
        info, coding = dict(im.info), jpeg_coding(im)  # as the file has them, before turning
        turned = int(im.getexif().get(0x0112, 1) or 1)
        if turned != 1:  # exif_transpose copies even when it is 1
            im = ImageOps.exif_transpose(im)
            notes.append("EXIF orientation applied")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"corrupt or truncated {fmt or 'image'} data ({exc})") from None
    if fmt == "PNG":
        storage, told = png_storage(path, turned)
    else:
        storage, told = pillow_storage(info, turned, coding)
    notes += told
    mode = im.mode
    alpha, mapping = None, None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        notes.append("alpha channel dropped")
        alpha = np.asarray(im.convert("RGBA").getchannel("A"))
    if mode == "P":
        notes.append("palette converted to RGB")
        im = im.convert("RGBA").convert("RGB")
    elif mode == "CMYK":
        notes.append("CMYK converted to RGB")
        im = im.convert("RGB")
    elif mode in ("RGBA", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif mode in ("LA", "1"):
        im = im.convert("L")
    if im.mode in ("I;16", "I;16B", "I;16L"):
        arr = np.asarray(im).astype(np.uint16)
    elif im.mode in ("I", "F"):
        arr, mapping = _to_levels(np.asarray(im), notes, f"{im.mode}-mode values")
    else:
        arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return Picture(np.ascontiguousarray(arr), notes, alpha=alpha, storage=storage, mapping=mapping)


def _deep_png_picture(path: Path) -> Picture:
    """A 16-bit colour or grey + alpha PNG, through imagecodecs (Pillow cuts it to 8 bits);
    what it says about its picture in `storage`, its EXIF orientation kept (not applied)."""
    import imagecodecs
    import numpy as np

    from gan_dist.data.metadata import png_storage

    try:
        arr = imagecodecs.png_decode(path.read_bytes())
    except Exception as exc:
        raise ImageReadError(f"corrupt or truncated 16-bit PNG data ({exc})") from None
    storage, notes = png_storage(path)
    alpha = None
    if arr.shape[2] in (2, 4):  # grey + alpha, RGBA
        notes.append("alpha channel dropped")
        arr, alpha = arr[:, :, :-1], arr[:, :, -1].copy()
    return Picture(np.ascontiguousarray(arr), notes, alpha=alpha, storage=storage)


def _to_levels(
    arr: np.ndarray, notes: list[str], what: str, bits: int = 16
) -> tuple[np.ndarray, ValueMapping | None]:
    """Wider, signed or float data as `bits`-bit levels (uint8 or uint16): kept as is when
    the values are non-negative integers that fit (no mapping), else rescaled from their
    own range, and the mapping (also a note) says how. Raises ImageReadError for NaN or
    infinite values (no rescaling could place them)."""
    import numpy as np

    _check_finite(arr)
    target = np.uint8 if bits == 8 else np.uint16
    top = int(np.iinfo(target).max)
    if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= top:
        return arr.astype(target), None
    lo, hi = float(arr.min()), float(arr.max())
    mapping = ValueMapping(what, lo, hi, top)
    notes.append(mapping.describe())
    half = hi / 2 - lo / 2  # halved: the span of float64 data may exceed its largest value
    scale = top / half if half > 0 else 0.0
    return np.round((arr.astype(np.float64) / 2 - lo / 2) * scale).astype(target), mapping


def levels_bits(dtype: np.dtype) -> int:
    """The depth of the levels that stand for samples of `dtype`: 8 for one-byte samples
    (int8), else 16."""
    return 8 if dtype.itemsize == 1 else 16


def _white_top(raw: np.ndarray) -> float | int:
    """What a min-is-white sample is subtracted from: the type's maximum for unsigned
    integers, else the largest value present (signed and float data have no fixed white)."""
    import numpy as np

    return np.iinfo(raw.dtype).max if raw.dtype.kind == "u" else float(raw.max())


def _shown(raw: np.ndarray, min_is_white: bool) -> np.ndarray:
    """Samples as they are shown, 0 = black: unsigned integers exactly, others in float64
    (a signed subtraction could overflow)."""
    if not min_is_white:
        return raw
    if raw.dtype.kind == "u":
        return _white_top(raw) - raw
    return _white_top(raw) - raw.astype("float64")


def shown_values(picture: Picture) -> np.ndarray:
    """(H, W, C) samples as they are shown (0 = black), in their own type: `pixels` for
    8/16-bit data, else the decoded signed, wide or float values (min-is-white inverted)."""
    if picture.original is None:
        return picture.pixels
    return _shown(picture.original, picture.storage.min_is_white)


def raw_from_levels(levels: np.ndarray, raw: np.ndarray, min_is_white: bool) -> np.ndarray:
    """The inverse of the reader's mapping (`_shown`, then `_to_levels`) for new values:
    levels (H, W, C) uint8/uint16 back to samples of `raw`'s dtype and range, stored as
    `raw` was (min-is-white or not), rounded and clipped for integer types."""
    import numpy as np

    shown = _shown(raw, min_is_white)
    top = float(np.iinfo(levels.dtype).max)
    lo, hi = float(shown.min()), float(shown.max())
    if shown.dtype.kind in "iu" and lo >= 0 and hi <= top:
        values = levels.astype(np.float64)
    else:  # halved as in `_to_levels`, so that no step overflows
        values = (lo / 2 + levels.astype(np.float64) * ((hi / 2 - lo / 2) / top)) * 2
    if min_is_white:
        values = _white_top(raw) - values
    info = np.iinfo(raw.dtype) if raw.dtype.kind in "iu" else np.finfo(raw.dtype)
    if raw.dtype.kind in "iu":
        values = np.round(values)
    return np.clip(values, info.min, info.max).astype(raw.dtype)


def _check_finite(values: np.ndarray) -> None:
    import numpy as np

    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise ImageReadError(
            f"{bad:,} pixel value(s) are NaN or infinite; replace them (e.g. with 0) and retry"
        )


# --- TIFF ----------------------------------------------------------------------------------


# photometric interpretations read (TIFF 6.0, section 8): grey, RGB, palette, separated
# (CMYK inks) and YCbCr as JPEG decodes it to RGB; others store values that need a colour
# transform we do not make (CIELab, raw sensor data, LogLuv)
_PHOTOMETRIC = {0: "min-is-white", 1: "min-is-black", 2: "RGB", 3: "palette", 5: "CMYK"}
_JPEG = (6, 7)  # old- and new-style JPEG compression


# text tags a scan carries about itself: DocumentName, Make, Model, DateTime, Artist, Copyright
_TEXT_TAGS = (269, 271, 272, 306, 315, 33432)


def tiff_storage(page) -> Storage:
    """How a TIFF page stores grey and alpha, and what it says about itself (resolution,
    description, colour profile, orientation, provenance text), and whether its file is a
    BigTIFF: see `Storage`."""
    kinds = page.extrasamples
    alpha = {1: "assocalpha", 2: "unassalpha"}.get(kinds[0] if kinds else 0, "unspecified")
    tags = page.tags
    text = tuple(
        (code, "s", 0, value, True)
        for code in _TEXT_TAGS
        if isinstance(value := tags.valueof(code), str) and value
    )
    orientation = tags.valueof(274)
    turned = ((274, "H", 1, int(orientation), True),) if orientation not in (None, 1) else ()
    has_resolution = 282 in tags and 283 in tags
    return Storage(
        page.photometric == 0,
        alpha,
        tuple(page.resolution) if has_resolution else None,
        int(page.resolutionunit) if has_resolution else None,
        page.description or None,
        page.iccprofile or None,
        text + turned,
        bigtiff=bool(page.parent.is_bigtiff),
    )


def tiff_form(page) -> tuple[int, int]:
    """(colour samples, levels depth) of a TIFF page, from its tags alone. Raises
    ImageReadError for a colour model that would be read as the wrong colours."""
    photometric = int(page.photometric)
    ycbcr = photometric == 6 and page.compression in _JPEG
    if photometric not in _PHOTOMETRIC and not ycbcr:
        name = getattr(page.photometric, "name", str(photometric))
        raise ImageReadError(
            f"TIFF colour model {name} is not supported; convert the file to RGB or greyscale"
        )
    colours = {0: 1, 1: 1, 3: 1}.get(photometric, 3)
    if photometric == 5:
        colours = page.samplesperpixel - len(page.extrasamples)
        inkset = page.tags.valueof(332, 1)  # InkSet: 1 is CMYK, 2 named inks
        if inkset != 1 or colours != 4:
            raise ImageReadError(
                f"TIFF with {colours} separated inks is not supported; only CMYK is; "
                "convert the file to RGB"
            )
    if photometric == 3:
        return 3, 8 if _palette_is_8bit(page.colormap) else 16
    return colours, levels_bits(page.dtype)


def _palette_is_8bit(colormap: np.ndarray) -> bool:
    """TIFF colour maps are 16-bit; most hold 8-bit colours scaled by 257."""
    return not (colormap % 257).any()


def _probe_tiff(path: Path, max_pixels: int, check_values: bool) -> tuple[int, int, int, int]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape, dtype = page.shape, page.dtype
            # before any decoding: a small file may claim a huge float page (a bomb)
            _check_size(page.imagewidth, page.imagelength, max_pixels)
            colours, depth = tiff_form(page)
            # a float scan with a NaN is refused here, before its depth counts for a pack
            floats = check_values and dtype is not None and dtype.kind in "fc"
            values = page.asarray() if floats else None
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"not a readable TIFF ({exc})") from None
    if values is not None:
        _check_finite(values)
    if len(shape) < 2 or dtype is None:
        raise ImageReadError(f"TIFF page has shape {shape}, not an image")
    return int(page.imagewidth), int(page.imagelength), min(colours, 3), depth


def _tiff_picture(path: Path) -> Picture:
    """A TIFF's first page. Palette and CMYK pages become RGB, min-is-white grey is shown
    0 = black, signed, wide and float samples become levels (`_to_levels`), and each change
    is noted; the samples as stored are kept in `original` (and `storage`) so that repair
    can write the known ones back unchanged."""
    import numpy as np
    import tifffile

    notes: list[str] = []
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            colours, _ = tiff_form(page)
            arr = page.asarray()
            planar_first = page.planarconfig == 2 or (
                arr.ndim == 3 and arr.shape[0] == page.samplesperpixel != arr.shape[-1]
            )
            photometric = int(page.photometric)
            colormap = page.colormap if photometric == 3 else None
            storage = tiff_storage(page)
            pages = len(tif.pages)
            if pages > 1:
                notes.append(f"first of {pages} pages used")
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"corrupt or unreadable TIFF ({exc})") from None
    if arr.ndim == 3 and planar_first:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ImageReadError(f"TIFF page has shape {arr.shape}, not a 2-D image")
    alpha = None
    if arr.shape[2] > colours + 1:
        raise ImageReadError(
            f"TIFF has {arr.shape[2] - colours} extra samples beside its {colours} colour "
            "sample(s); gan-dist keeps at most one (alpha): save the file without the others"
        )
    if arr.shape[2] > colours:  # the extra sample: alpha (TIFF 6.0, ExtraSamples)
        notes.append("alpha channel dropped")
        arr, alpha = arr[:, :, :colours], arr[:, :, colours].copy()
    if colormap is not None:
        notes.append("palette converted to RGB")
        arr = np.moveaxis(colormap[:, arr[:, :, 0].astype(np.intp)], 0, -1)
        arr = (arr // 257).astype(np.uint8) if _palette_is_8bit(colormap) else arr
    elif arr.dtype == np.bool_:  # 1-bit (fax, CCITT): 0/255, stored as such
        notes.append("1-bit read as 8-bit 0/255")
        arr = arr.astype(np.uint8) * 255
    elif photometric == 6:
        notes.append("YCbCr (JPEG) decoded to RGB")
    elif photometric == 5:
        notes.append("CMYK converted to RGB")
        arr = _cmyk_to_rgb(arr)
    if storage.min_is_white:
        notes.append("min-is-white inverted")
    _check_finite(arr)  # before min-is-white, which would spread a NaN's maximum
    shown = _shown(arr, storage.min_is_white)
    original, mapping = None, None
    if shown.dtype not in (np.uint8, np.uint16):
        original = arr
        what = f"TIFF {arr.dtype} values"
        shown, mapping = _to_levels(shown, notes, what, levels_bits(arr.dtype))
    return Picture(
        np.ascontiguousarray(shown),
        notes,
        alpha=alpha,
        original=original,
        pages=pages,
        storage=storage,
        mapping=mapping,
    )


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """(H, W, 4) ink amounts (0 = none) -> (H, W, 3) RGB of the same dtype, by the naive
    conversion Pillow also makes (R = (1 - C)(1 - K)); no colour profile is applied."""
    import numpy as np

    if cmyk.dtype.kind != "u":
        raise ImageReadError(f"CMYK TIFF with {cmyk.dtype} samples is not supported")
    top = float(np.iinfo(cmyk.dtype).max)
    paper = top - cmyk.astype(np.float64)
    rgb = paper[:, :, :3] * paper[:, :, 3:] / top
    return np.round(rgb).astype(cmyk.dtype)


# --- DICOM ---------------------------------------------------------------------------------


def _read_dicom(path: Path, header_only: bool = False):
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(
            "DICOM needs the optional pydicom package: pip install 'gan-dist[medical]'"
        ) from None
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except Exception as exc:
        raise ImageReadError(f"not a readable DICOM file ({exc})") from None


def _dicom_picture(path: Path) -> Picture:
    """Modality LUT (rescale slope/intercept) applied, MONOCHROME1 inverted, then the real
    value range mapped linearly onto 16 bits; `mapping` says how, so that repair's output
    carries it and the modality values can be recovered (`extra` keeps the range too)."""
    import numpy as np

    ds = _read_dicom(path)
    notes, frames = [], 1
    try:
        from pydicom.pixels import apply_modality_lut

        raw = ds.pixel_array
        if raw.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 1:
            frames = raw.shape[0]
            notes.append(f"first of {frames} frames used")
            raw = raw[0]
        lut = _modality_module(ds)
        values = apply_modality_lut(raw, lut).astype(np.float64)
    except Exception as exc:
        raise ImageReadError(
            f"cannot decode DICOM pixels ({exc}); compressed transfer syntaxes may need "
            "pylibjpeg or gdcm installed"
        ) from None
    _check_finite(values)
    inverted = str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if inverted:
        notes.append("MONOCHROME1 inverted")
        values = values.max() + values.min() - values
    lo, hi = float(values.min()), float(values.max())
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    arr = np.round((values - lo) * scale).astype(np.uint16)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    mapping = ValueMapping(
        "DICOM modality values",
        hi if inverted else lo,
        lo if inverted else hi,
        65535,
        _dicom_units(lut),
        _dicom_grid(lut, raw),
    )
    extra = {"dicom_min": lo, "dicom_max": hi}
    return Picture(arr, notes, extra, pages=frames, mapping=mapping)


def _modality_module(ds):
    """The dataset whose Modality LUT module (rescale slope, intercept and type, or a LUT)
    applies to the first frame: the file itself, or for an enhanced multi-frame image,
    which keeps it in its functional groups (PS3.3 C.7.6.16.2.9), the first frame's Pixel
    Value Transformation (its per-frame group over the shared one), with the file's
    Modality beside it."""
    from pydicom.dataset import Dataset

    if "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
        return ds
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(groups)
        transform = items[0].get("PixelValueTransformationSequence") if items else None
        if transform:
            found = Dataset()
            for key in ("RescaleIntercept", "RescaleSlope", "RescaleType"):
                if key in transform[0]:
                    setattr(found, key, transform[0][key].value)
            found.Modality = getattr(ds, "Modality", "")
            return found
    return ds


def _dicom_units(ds) -> str:
    """The modality values' units: Rescale Type where the file gives one (`HU`, `OD`;
    `US`, unspecified, says there are none), else HU for a CT that rescales its samples
    (PS3.3 C.8.2.1 makes slope and intercept mandatory there; without them the stored
    values are not known to be HU, and no unit is claimed)."""
    kind = str(getattr(ds, "RescaleType", "") or "").strip()
    if kind:
        return "" if kind == "US" else kind
    ct = str(getattr(ds, "Modality", "")).upper() == "CT"
    return "HU" if ct and "RescaleIntercept" in ds else ""


def _dicom_grid(ds, raw: np.ndarray) -> tuple[float, float] | None:
    """(slope, intercept) when every modality value is intercept + slope * a stored integer:
    a linear rescale (or none) of integer samples; None for a Modality LUT or float data."""
    if "ModalityLUTSequence" in ds or raw.dtype.kind not in "iu":
        return None
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    return slope, float(getattr(ds, "RescaleIntercept", 0) or 0)


# --- Conversions ---------------------------------------------------------------------------


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    import numpy as np

    if arr.shape[2] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=2)
    # ITU-R BT.601 luma, computed in float so 16-bit data keeps its precision
    weights = np.array([0.299, 0.587, 0.114])
    grey = np.round(arr.astype(np.float64) @ weights)
    return grey.astype(arr.dtype)[:, :, None]


def to_bit_depth(arr: np.ndarray, depth: int) -> np.ndarray:
    """8 -> 16 is exact (x257); 16 -> 8 loses bits and is only done when the user asks."""
    import numpy as np

    if depth == 16 and arr.dtype == np.uint8:
        return arr.astype(np.uint16) * 257
    if depth == 8 and arr.dtype == np.uint16:
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    return arr


def to_float(arr: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> float32 in [0, 1]."""
    import numpy as np

    return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)


def from_float(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    import numpy as np

    top = float(np.iinfo(dtype).max)
    return np.round(np.clip(arr, 0.0, 1.0) * top).astype(dtype)


def resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased resize of any depth: 8-bit through Pillow directly, 16-bit per channel in
    Pillow's float mode (its 16-bit integer modes only resize with nearest neighbour)."""
    import numpy as np
    from PIL import Image

    if arr.shape[1] == width and arr.shape[0] == height:
        return arr
    if arr.dtype == np.uint8:
        im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        out = np.asarray(im.resize((width, height), Image.Resampling.LANCZOS))
        return out[:, :, None] if out.ndim == 2 else out
    planes = []
    for c in range(arr.shape[2]):
        im = Image.fromarray(arr[:, :, c].astype(np.float32), mode="F")
        planes.append(np.asarray(im.resize((width, height), Image.Resampling.LANCZOS)))
    out = np.clip(np.round(np.stack(planes, axis=2)), 0, 65535)
    return out.astype(np.uint16)


def picture_grid(
    rows: list[list[np.ndarray]], gap: int = 4, labels: list[str] | None = None
) -> np.ndarray:
    """Rows of same-sized pictures (any depth, 1 or 3 channels) as one 8-bit RGB picture
    for people to look at, with white gaps; `labels` name the columns in a header line."""
    import numpy as np

    lines = [] if labels is None else [_header(labels, rows[0][0].shape[1], gap)]
    for row in rows:
        tiles = [to_channels(to_bit_depth(arr, 8), 3) for arr in row]
        spacer = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
        lines.append(np.concatenate([t for tile in tiles for t in (spacer, tile)][1:], axis=1))
    spacer = np.full((gap, lines[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([t for line in lines for t in (spacer, line)][1:], axis=0)


def _header(labels: list[str], width: int, gap: int) -> np.ndarray:
    """A white line with each label centred over its column, in Pillow's built-in font."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    size = min(18, max(10, width // 9))
    longest = max(labels, key=len)
    while size > 6 and ImageFont.load_default(size=size).getlength(longest) > width - 2:
        size -= 1  # small tiles: a smaller font rather than labels cut at both ends
    font = ImageFont.load_default(size=size)
    height = font.size + 8
    line = Image.new("RGB", (len(labels) * (width + gap) - gap, height), "white")
    draw = ImageDraw.Draw(line)
    for i, label in enumerate(labels):
        draw.text((i * (width + gap) + width / 2, height / 2), label, "black", font, "mm")
    return np.asarray(line)


# --- PNG bytes (shards) and files ----------------------------------------------------------


def encode_png(arr: np.ndarray) -> bytes:
    """Lossless PNG of any depth. Level 1: 3x faster than the default and ~4% larger."""
    import imagecodecs
    import numpy as np

    plane = arr[:, :, 0] if arr.shape[2] == 1 else arr
    return imagecodecs.png_encode(np.ascontiguousarray(plane), level=1)  # views, e.g. a slice


def decode_png(data: bytes) -> np.ndarray:
    import imagecodecs

    arr = imagecodecs.png_decode(data)
    return arr[:, :, None] if arr.ndim == 2 else arr


def encode_array(arr: np.ndarray) -> bytes:
    """(H, W, C) uint8/uint16 as a NumPy .npy file compressed with Zstandard (level 3):
    lossless at any depth and about 8x faster to decode than PNG (0.2 ms against 1.5 ms
    for a 256 px 16-bit scan, at about the same size); PNG's filters compress 8-bit photos
    better."""
    import io

    import imagecodecs
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return imagecodecs.zstd_encode(buf.getvalue(), level=3)


def decode_array(data: bytes) -> np.ndarray:
    """The inverse of `encode_array`; never unpickles and never inflates a part past
    MAX_PART_BYTES (a shard may come from anywhere: a few kB of zstd can claim gigabytes)."""
    import io

    import imagecodecs
    import numpy as np

    declared = zstd_content_size(data)
    if declared is not None and declared > MAX_PART_BYTES:
        raise ValueError(
            f"zstd array claims {declared:,} bytes, over the {MAX_PART_BYTES:,}-byte limit "
            "for one image part"
        )
    try:
        raw = imagecodecs.zstd_decode(data, out=declared or MAX_PART_BYTES)
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:  # zstd, npy header and pickle refusals: all mean a bad part
        raise ValueError(f"corrupt zstd array ({type(exc).__name__}: {exc})") from None
    if not isinstance(arr, np.ndarray):  # np.load also opens .npz archives
        raise ValueError(f"not an image array but {type(arr).__name__}")
    if arr.ndim != 3 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"not an image array: {arr.dtype} {arr.shape}")
    return arr


MAX_PART_BYTES = 1 << 28  # 256 MiB: a 4096 px RGB 16-bit image is 96 MiB


def zstd_content_size(data: bytes) -> int | None:
    """The decompressed size a Zstandard frame declares in its header (RFC 8878, 3.1.1.1),
    or None when the frame does not declare it. Raises ValueError for a non-zstd header."""
    if len(data) < 6 or data[:4] != b"\x28\xb5\x2f\xfd":
        raise ValueError("not a zstd frame")
    descriptor = data[4]
    single_segment = bool(descriptor & 0x20)
    field = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 0x03]
    if field == 0:
        return None
    if len(data) < start + field:
        raise ValueError("truncated zstd frame header")
    size = int.from_bytes(data[start : start + field], "little")
    return size + 256 if field == 2 else size


# the codecs of a shard's image parts: name -> (file extension, encode, decode)
CODECS = {"png": ("png", encode_png, decode_png), "zstd": ("npy.zst", encode_array, decode_array)}


def sample_part(sample: dict, part: str) -> np.ndarray:
    """A shard sample's `part` ("damaged", "clean", "mask") decoded, whichever codec packed
    it. Raises KeyError(`part`.png) when the sample has no such part, ValueError naming the
    part when it cannot be decoded."""
    for ext, *_ in CODECS.values():
        data = sample.get(f"{part}.{ext}")
        if data is not None:
            return decode_part(f"{part}.{ext}", data)
    raise KeyError(f"{part}.png")


def decode_part(name: str, data: bytes) -> np.ndarray:
    """One image part of a shard by its name (`clean.png`, `mask.npy.zst`, ...) as
    (H, W, C) uint8/uint16. Raises ValueError naming the part for anything undecodable."""
    decode = next(dec for ext, _, dec in CODECS.values() if name.endswith(f".{ext}"))
    try:
        return decode(data)
    except Exception as exc:  # every codec's own error type means the same: a bad part
        raise ValueError(f"{name}: {exc}" if str(exc) else f"{name}: empty or corrupt") from None


def write_png_atomic(path: Path, arr: np.ndarray) -> None:
    write_bytes_atomic(path, encode_png(arr))
