"""TIFF pages read a band of rows at a time and written a tile at a time, so that repairing
a 20000x20000 scan holds a few hundred rows of it in memory, never the whole image.

Reading goes through tifffile: a page stored in strips or tiles is opened as a Zarr array
(`TiffPage.aszarr`), which decodes only the segments a slice touches; an uncompressed page
stored in one piece (what most scanners write) is memory-mapped for each read and unmapped
after it, so the pages read do not stay resident. Writing gives tifffile an iterator of
256 px tiles. A page that cannot be read in parts (compressed in segments taller than
`MAX_SEGMENT_ROWS`, several pages, float, 1-bit, palette or CMYK samples) is not streamed:
`open_tiff` returns None and the caller reads it whole (`images.read_image`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from gan_dist.data.images import ImageReadError, probe, tiff_form, tiff_storage
from gan_dist.data.metadata import Storage

MAX_SEGMENT_ROWS = 1024  # a taller compressed strip is decoded whole for every band read
BAND_ROWS = 256  # rows per read when a caller walks a whole file
CACHE_ROWS = 512  # a read of at most this many rows fetches (and keeps) whole-width rows
WRITE_TILE = 256  # px, the side of the tiles written
CLASSIC_LIMIT = 2**32  # bytes: past this a TIFF needs BigTIFF's 64-bit offsets
_PHOTOMETRIC = {0: "miniswhite", 1: "minisblack", 2: "rgb"}


class TiffRaster:
    """One TIFF page, read lazily: `pixels` (H, W, 1|3) and `alpha` (H, W) or None, both
    uint8/uint16 and sliced like numpy arrays by [rows, columns]. Min-is-white pages read
    inverted, as `read_image` reads them. Use as a context manager (it keeps the file open).
    Shaped like `images.Picture`, so the same code repairs either."""

    def __init__(self, path: Path, page, handle) -> None:
        self.path, self._handle = path, handle
        height, width = page.imagelength, page.imagewidth
        samples = page.samplesperpixel
        self._planar = samples > 1 and page.planarconfig == 2
        self._invert = page.photometric == 0
        self.colours = tiff_form(page)[0]
        self.dtype = np.dtype(page.dtype)
        self.notes: list[str] = ["min-is-white inverted"] if self._invert else []
        self.pages, self.original, self.mapping = 1, None, None
        self.storage = tiff_storage(page)
        self.bit_depth = 8 * self.dtype.itemsize
        self.shape = (height, width, samples)
        self._read = _contiguous_reader(path, page) or _zarr_reader(page)
        self._band: tuple[int, int, np.ndarray] = (0, 0, np.empty((0, width, samples)))
        self.pixels = _Samples(self, slice(0, self.colours))
        self.alpha = _Samples(self, self.colours) if samples > self.colours else None

    def __enter__(self) -> TiffRaster:
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()

    def rows(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """(h, w, samples) of rows [top, bottom) and columns [left, right)."""
        cached_top, cached_bottom, band = self._band
        if not (cached_top <= top and bottom <= cached_bottom):
            if bottom - top > CACHE_ROWS:  # a tall hole's box: read once, not kept
                return self._decoded(top, bottom, left, right)
            band = self._decoded(top, bottom, 0, self.shape[1])
            self._band = (top, bottom, band)
            cached_top = top
        return band[top - cached_top : bottom - cached_top, left:right]

    def _decoded(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        try:
            values = self._read(top, bottom, left, right)
        except Exception as exc:  # each codec has its own error type; all mean a bad file
            raise ImageReadError(
                f"corrupt or unreadable TIFF at rows {top}-{bottom} ({type(exc).__name__}: {exc})"
            ) from None
        if self._planar:
            values = np.moveaxis(values, 0, -1)
        values = values.reshape(values.shape[0], values.shape[1], -1)
        if self._invert:
            values[..., : self.colours] = np.iinfo(self.dtype).max - values[..., : self.colours]
        return values


class _Samples:
    """The colour samples or the alpha sample of a TiffRaster as an array-like."""

    def __init__(self, raster: TiffRaster, samples: slice | int) -> None:
        self.raster, self.samples = raster, samples
        height, width, _ = raster.shape
        self.dtype = raster.dtype
        self.shape = (
            (height, width, raster.colours) if isinstance(samples, slice) else (height, width)
        )

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key
        top, bottom, _ = ys.indices(self.shape[0])
        left, right, _ = xs.indices(self.shape[1])
        return self.raster.rows(top, max(top, bottom), left, max(left, right))[..., self.samples]


def open_tiff(path: Path, max_pixels: int) -> TiffRaster | None:
    """A TiffRaster for a page that can be read in parts, else None (read it whole).
    Raises ImageReadError for a file that is not a readable TIFF or is over max_pixels."""
    import tifffile

    probe(path, max_pixels, check_values=False)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise ImageReadError(f"not a readable TIFF ({exc})") from None
    page = tif.pages[0]
    streamable = (
        len(tif.pages) == 1
        and page.dtype in (np.uint8, np.uint16)
        and page.photometric in _PHOTOMETRIC
        and page.samplesperpixel - tiff_form(page)[0] in (0, 1)  # at most an alpha sample
        and (_contiguous_reader(path, page) is not None or _segment_rows(page) <= MAX_SEGMENT_ROWS)
    )
    if not streamable:
        tif.close()
        return None
    return TiffRaster(path, page, tif)


def _segment_rows(page) -> int:
    return page.tilelength if page.is_tiled else min(page.rowsperstrip, page.imagelength)


def _contiguous_reader(path: Path, page):
    """Rows of an uncompressed page stored in one piece, through a memory map made for each
    read (so the pages read do not stay resident); None for any other page."""
    # bytes as stored are the samples only without compression, predictor or reversed bits
    plain = page.compression == 1 and page.predictor == 1 and page.fillorder == 1
    if not (page.is_contiguous and plain):
        return None
    dtype = np.dtype(page.dtype).newbyteorder(page.parent.byteorder)
    height, width, samples = page.imagelength, page.imagewidth, page.samplesperpixel
    planar = samples > 1 and page.planarconfig == 2
    shape = (samples, height, width) if planar else (height, width, samples)

    def read(top: int, bottom: int, left: int, right: int) -> np.ndarray:
        mapped = np.memmap(path, dtype, "r", page.dataoffsets[0], shape)
        try:
            region = mapped[:, top:bottom, left:right] if planar else mapped[top:bottom, left:right]
            return region.astype(dtype.newbyteorder("="))
        finally:
            mapped._mmap.close()

    return read


def _zarr_reader(page):
    """Rows of a page stored in strips or tiles: tifffile's Zarr store decodes only the
    segments a slice touches."""
    import zarr

    array = zarr.open(page.aszarr(), mode="r")
    planar = page.samplesperpixel > 1 and page.planarconfig == 2

    def read(top: int, bottom: int, left: int, right: int) -> np.ndarray:
        if planar:
            return array[:, top:bottom, left:right]
        return array[top:bottom, left:right]

    return read


def needs_bigtiff(
    shape: tuple[int, int, int], dtype: np.dtype, storage: Storage, limit: int = CLASSIC_LIMIT
) -> bool:
    """Whether a TIFF that `write_tiff` writes of shape (H, W, C) could pass `limit` bytes
    (classic TIFF's 32-bit offsets), decided before a byte is written: its uncompressed
    size, plus 1% for zlib on data it cannot shrink (deflate's stored blocks add 5 bytes
    in 64 KiB), 64 bytes a tile for its offset, byte count and zlib framing, the page's
    own metadata, and 1 MiB for the tags."""
    height, width, channels = shape
    raw = height * width * channels * np.dtype(dtype).itemsize
    tiles = -(-height // WRITE_TILE) * -(-width // WRITE_TILE)
    told = len(storage.icc or b"") + len((storage.description or "").encode())
    told += sum(len(str(tag[3]).encode()) for tag in storage.tags)
    return raw + raw // 100 + 64 * tiles + told + 2**20 > limit


def write_tiff(
    handle: IO[bytes],
    shape: tuple[int, int, int],
    dtype: np.dtype,
    rows: Iterable[np.ndarray],
    storage: Storage,
    classic_limit: int = CLASSIC_LIMIT,
) -> bool:
    """Writes a zlib-compressed TIFF of shape (H, W, C) (C = 2 or 4: the last is alpha) from
    bands of rows (n, W, C) given top to bottom, holding one row of 256 px tiles at a time.
    The rows are samples as stored: grey is written min-is-white and the alpha sample of
    the kind `storage` says, with the source page's resolution, description, colour
    profile, orientation and provenance tags. The file is a BigTIFF where the source was
    one or where it could pass `classic_limit` bytes (`needs_bigtiff`); returns whether it
    is. Raises ValueError when the rows do not add up to H."""
    import tifffile

    height, width, channels = shape
    bigtiff = storage.bigtiff or needs_bigtiff(shape, dtype, storage, classic_limit)
    extra = [storage.alpha] if channels in (2, 4) else None
    photometric = "rgb" if channels >= 3 else "miniswhite" if storage.min_is_white else "minisblack"
    plane = (height, width) if channels == 1 else shape
    tifffile.imwrite(
        handle,
        _tiles(rows, height, width, channels),
        shape=plane,
        dtype=dtype,
        tile=(WRITE_TILE, WRITE_TILE),
        bigtiff=bigtiff,
        photometric=photometric,
        extrasamples=extra,
        compression="zlib",
        resolution=storage.resolution,
        resolutionunit=storage.resolution_unit,
        description=_tiff_text(storage.description),
        iccprofile=storage.icc,
        extratags=[(*tag[:3], _tiff_text(tag[3]), *tag[4:]) for tag in storage.tags],
        metadata=None,  # no tifffile shape record: the page describes itself as it came
        # tifffile compresses this much at a time, read ahead from the iterator (512 MB
        # by default): one row of tiles keeps memory flat
        buffersize=WRITE_TILE * width * channels * np.dtype(dtype).itemsize,
    )
    return bigtiff


def _tiff_text(value):
    """A text value as tifffile writes it: str when ASCII (what TIFF 6.0 asks), else its
    UTF-8 bytes (which tifffile would otherwise refuse, after the repair)."""
    if isinstance(value, str) and not value.isascii():
        return value.encode("utf-8")
    return value


def _tiles(rows: Iterable[np.ndarray], height: int, width: int, channels: int) -> Iterator:
    """Tiles in the order TIFF stores them (left to right, top to bottom) from row bands."""
    pending: list[np.ndarray] = []
    held = done = 0
    for band in rows:
        pending.append(band)
        held += len(band)
        while held >= WRITE_TILE or (held and done + held == height):
            block = np.concatenate(pending) if len(pending) > 1 else pending[0]
            take = min(WRITE_TILE, held)
            for left in range(0, width, WRITE_TILE):
                part = block[:take, left : left + WRITE_TILE]
                yield part[:, :, 0] if channels == 1 else part
            pending, held, done = [block[take:]], held - take, done + take
    if done != height:
        raise ValueError(f"rows add up to {done}, the image has {height}")
