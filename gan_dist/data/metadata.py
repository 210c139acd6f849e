"""What a picture says about itself beside its pixels (colour profile, EXIF, resolution, text),
read from every format repair reads and written into every format it writes that can hold
it, so that a repaired file describes its picture as the original did.

Read: PNG chunks are walked here (iCCP, eXIf, pHYs, tEXt, zTXt, iTXt, wherever they lie;
the image data is skipped, not decoded); JPEG, WebP and BMP through what Pillow read
(`Image.info`); TIFF by `images.tiff_storage`. EXIF is kept byte for byte (maker notes hold
offsets that a rewrite would break) with three values patched where they stand: the
orientation, set to 1 where the reader turned the pixels (so nothing turns them twice), the
pixel dimensions, swapped where it turned them a quarter, and the link to the thumbnail,
cut (a picture of the unrepaired image).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_HEAD = b"Exif\x00\x00"
MAX_CHUNK = 1 << 26  # 64 MiB: past this a chunk (or what it inflates to) is not metadata
JPEG_MAX_EXIF = 65_533  # bytes in one APP1 segment, the Exif head included
ORIENTATION, EXIF_IFD, PIXEL_X, PIXEL_Y = 0x0112, 0x8769, 0xA002, 0xA003
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# IFD0 text tags that TIFF holds as its own: ImageDescription, Make, Model, DateTime,
# Artist, Copyright
TEXT_TAGS = (270, 271, 272, 306, 315, 33432)
_TEXT_KINDS = (b"tEXt", b"zTXt", b"iTXt")
# the data colour spaces an ICC profile's header names (ICC.1:2022, 7.2.6)
ICC_SPACES = {"XYZ", "Lab", "Luv", "YCbr", "Yxy", "RGB", "GRAY", "HSV", "HLS", "CMYK", "CMY"}
ICC_SPACES |= {f"{n:X}CLR" for n in range(2, 16)}


@dataclass(frozen=True)
class JpegCoding:
    """How a JPEG was encoded, so that its repair is encoded alike: quantization tables (64
    values each, in Pillow's order), chroma subsampling (Pillow: 0 is 4:4:4, 1 is 4:2:2,
    2 is 4:2:0; -1 unknown or grey) and whether it was progressive."""

    qtables: tuple[tuple[int, ...], ...]
    subsampling: int
    progressive: bool


@dataclass(frozen=True)
class Storage:
    """How a file stored its samples and what it says about its picture, so that repair
    writes them back the same way (`gan_dist.data.metadata`). TIFF: grey as min-is-white
    (0 = white), the alpha sample's kind (ExtraSamples: `assocalpha` for premultiplied
    colours, `unassalpha`, or `unspecified`), BigTIFF; JPEG: its coding."""

    min_is_white: bool = False
    alpha: str = "unassalpha"
    # what a file says about its picture, written back unchanged where the output holds it
    resolution: tuple[float, float] | None = None  # pixels per `resolution_unit`
    resolution_unit: int | None = None  # TIFF ResolutionUnit: 2 inch, 3 centimetre
    description: str | None = None  # TIFF ImageDescription, a JPEG comment
    icc: bytes | None = None  # the colour profile (ICC)
    tags: tuple[tuple[int, str, int, object, bool], ...] = ()  # tifffile `extratags`
    text: tuple[tuple[str, str], ...] = ()  # PNG text chunks (keyword, text)
    bigtiff: bool = False  # the file was a BigTIFF: so is its repair
    exif: bytes | None = None  # `Exif\0\0` and EXIF as kept (`metadata.neutral_exif`)
    jpeg: JpegCoding | None = None  # a JPEG's tables and subsampling, to encode its repair alike


def png_storage(path: Path, turned: int = 1) -> tuple[Storage, list[str]]:
    """What a PNG file says about its picture: ICC profile, EXIF (orientation patched where
    the reader applied `turned`, an EXIF orientation 2-8), resolution (pHYs, kept as pixels
    per centimetre) and text chunks. The notes name chunks that could not be read (they
    are not kept)."""
    icc = exif = resolution = None
    text: list[tuple[str, str]] = []
    notes: list[str] = []
    for kind, payload in _png_chunks(path):
        try:
            if kind == b"iCCP":
                icc = _inflate(payload[payload.index(b"\0") + 2 :])
            elif kind == b"eXIf":
                exif = neutral_exif(EXIF_HEAD + payload, turned)
                if exif is None:
                    notes.append("EXIF unreadable: not kept")
            elif kind == b"pHYs" and payload[8] == 1:  # per metre; 0 is an aspect ratio only
                x, y = struct.unpack(">II", payload[:8])
                resolution = (x / 100, y / 100)
            elif kind in _TEXT_KINDS:
                text.append(_png_text(kind, payload))
        except (ValueError, IndexError, zlib.error, struct.error, UnicodeDecodeError):
            notes.append(f"PNG {kind.decode()} chunk unreadable: not kept")
    storage = Storage(
        resolution=resolution,
        resolution_unit=3 if resolution else None,
        icc=icc,
        text=tuple(text),
        exif=exif,
    )
    return storage, notes


def pillow_storage(info: dict, turned: int, coding: JpegCoding | None) -> tuple[Storage, list[str]]:
    """What a JPEG, WebP or BMP says about its picture, from Pillow's `Image.info` of the
    file as opened (before any turning): ICC profile, EXIF (see `neutral_exif`), resolution
    (dpi, swapped where `turned` turned the picture a quarter), a JPEG comment as the
    description, and `coding`."""
    notes = []
    exif = neutral_exif(info.get("exif"), turned)
    if info.get("exif") and exif is None:
        notes.append("EXIF unreadable: not kept")
    dpi = info.get("dpi")
    resolution = None
    if dpi and len(dpi) == 2 and all(float(v) > 0 for v in dpi):
        resolution = (float(dpi[1]), float(dpi[0])) if turned in QUARTER_TURNS else tuple(dpi)
    comment = info.get("comment")
    if isinstance(comment, bytes):
        comment = comment.decode("latin-1")
    storage = Storage(
        resolution=resolution,
        resolution_unit=2 if resolution else None,
        description=comment or None,
        icc=info.get("icc_profile") or None,
        exif=exif,
        jpeg=coding,
    )
    return storage, notes


def jpeg_coding(im) -> JpegCoding | None:
    """The quantization tables, subsampling and progression of a JPEG Pillow opened."""
    from PIL import JpegImagePlugin

    tables = getattr(im, "quantization", None)
    if im.format != "JPEG" or not tables:
        return None
    return JpegCoding(
        tuple(tuple(int(v) for v in tables[k]) for k in sorted(tables)),
        JpegImagePlugin.get_sampling(im),
        bool(im.info.get("progressive") or im.info.get("progression")),
    )


def neutral_exif(raw: bytes | None, turned: int = 1) -> bytes | None:
    """EXIF (with or without its `Exif\\0\\0` head) as it is kept beside repaired pixels:
    byte for byte, with the orientation set to 1 where the reader applied `turned` (2-8),
    PixelXDimension and PixelYDimension swapped where that was a quarter turn, and the
    thumbnail (IFD1) unlinked. Returned with the head; None when `raw` is empty or not
    EXIF's TIFF structure."""
    if not raw:
        return None
    data = bytearray(raw[len(EXIF_HEAD) :] if raw.startswith(EXIF_HEAD) else raw)
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(data[:2])]
        if struct.unpack_from(order + "H", data, 2)[0] != 42:
            return None
        ifd0 = struct.unpack_from(order + "I", data, 4)[0]
        entries = _ifd(data, order, ifd0)
        if turned != 1 and ORIENTATION in entries:
            struct.pack_into(order + "H", data, entries[ORIENTATION] + 8, 1)
        if turned in QUARTER_TURNS and EXIF_IFD in entries:
            sub = _ifd(data, order, struct.unpack_from(order + "I", data, entries[EXIF_IFD] + 8)[0])
            if PIXEL_X in sub and PIXEL_Y in sub:
                x, y = sub[PIXEL_X], sub[PIXEL_Y]
                if data[x + 2 : x + 8] == data[y + 2 : y + 8]:  # same type and count
                    data[x + 8 : x + 12], data[y + 8 : y + 12] = (
                        data[y + 8 : y + 12],
                        data[x + 8 : x + 12],
                    )
        count = struct.unpack_from(order + "H", data, ifd0)[0]
        struct.pack_into(order + "I", data, ifd0 + 2 + 12 * count, 0)  # no IFD1: no thumbnail
    except (KeyError, struct.error):
        return None
    return EXIF_HEAD + bytes(data)


def _ifd(data: bytearray, order: str, offset: int) -> dict[int, int]:
    """tag -> offset of its 12-byte entry, for the IFD at `offset`. Raises struct.error
    when the IFD lies outside the data."""
    count = struct.unpack_from(order + "H", data, offset)[0]
    if offset + 2 + 12 * count + 4 > len(data):
        raise struct.error("IFD runs past the end of the EXIF data")
    first = offset + 2
    return {
        struct.unpack_from(order + "H", data, first + 12 * i)[0]: first + 12 * i
        for i in range(count)
    }


def exif_tiff_tags(exif: bytes) -> tuple[tuple[int, str, int, object, bool], ...]:
    """EXIF's IFD0 text tags (description, make, model, date, artist, copyright) as
    tifffile `extratags`: what a TIFF holds of EXIF as its own tags."""
    from PIL import Image

    read = Image.Exif()
    try:
        read.load(exif)
    except Exception:  # Pillow raises what its parser meets; all mean: nothing to take
        return ()
    return tuple(
        (code, "s", 0, value, True)
        for code in TEXT_TAGS
        if isinstance(value := read.get(code), str) and value.strip("\0 ")
    )


def exif_from_tags(tags: tuple[tuple[int, str, int, object, bool], ...]) -> bytes | None:
    """A TIFF page's own text and orientation tags as EXIF (IFD0), for an output format
    that holds EXIF but not TIFF tags; None when there are none."""
    from PIL import Image

    exif = Image.Exif()
    for code, _, _, value, _ in tags:
        if code in TEXT_TAGS or code == ORIENTATION:
            exif[code] = value
    return exif.tobytes() if len(exif) else None


def icc_space(icc: bytes) -> str:
    """The colour space an ICC profile describes (its header's data colour space: `RGB`,
    `GRAY`, `CMYK`, `Lab`...), or '' when the header is too short."""
    return icc[16:20].decode("latin-1").strip() if len(icc) >= 128 else ""


def png_chunks(storage: Storage) -> list[tuple[bytes, bytes]]:
    """The ancillary PNG chunks (type, payload) that carry `storage`: iCCP, pHYs, eXIf and
    text (tEXt, or iTXt beyond Latin-1; the description as `Description` unless a text
    chunk of that keyword is there)."""
    chunks = []
    if storage.icc:
        chunks.append((b"iCCP", b"ICC profile\0\0" + zlib.compress(storage.icc)))
    if storage.resolution and storage.resolution_unit in (2, 3):
        per_metre = 100 / 2.54 if storage.resolution_unit == 2 else 100
        x, y = (round(v * per_metre) for v in storage.resolution)
        if 0 < x < 2**31 and 0 < y < 2**31:
            chunks.append((b"pHYs", struct.pack(">IIB", x, y, 1)))
    if storage.exif:
        chunks.append((b"eXIf", storage.exif.removeprefix(EXIF_HEAD)))
    text = list(storage.text)
    if storage.description and "Description" not in dict(text):
        text.append(("Description", storage.description))
    chunks += [_text_chunk(key, value) for key, value in text]
    return chunks


def png_with_metadata(data: bytes, storage: Storage) -> bytes:
    """PNG bytes with `png_chunks(storage)` inserted after IHDR, where every chunk that must
    precede the image data may go. Raises ValueError for bytes that do not start with a
    PNG's IHDR."""
    chunks = png_chunks(storage)
    if not chunks:
        return data
    end = len(PNG_SIGNATURE) + 4 + 4 + 13 + 4  # IHDR: length, type, 13 bytes, CRC
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG that starts with its IHDR chunk")
    made = [
        len(payload).to_bytes(4, "big")
        + kind
        + payload
        + zlib.crc32(kind + payload).to_bytes(4, "big")
        for kind, payload in chunks
    ]
    return data[:end] + b"".join(made) + data[end:]


def _png_chunks(path: Path):
    """(type, payload) of the metadata chunks of a PNG file, in order; the image data and
    any chunk over MAX_CHUNK are skipped unread."""
    wanted = (b"iCCP", b"eXIf", b"pHYs", *_TEXT_KINDS)
    with open(path, "rb") as fh:
        if fh.read(8) != PNG_SIGNATURE:
            return
        while len(head := fh.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                return
            if kind in wanted and length <= MAX_CHUNK:
                payload = fh.read(length)
                fh.seek(4, 1)  # CRC
                yield kind, payload
            else:
                fh.seek(length + 4, 1)


def _inflate(data: bytes) -> bytes:
    """zlib data inflated to at most MAX_CHUNK bytes; raises ValueError past that (a bomb)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_CHUNK)
    if inflater.unconsumed_tail:
        raise ValueError(f"inflates past {MAX_CHUNK:,} bytes")
    return out


def _png_text(kind: bytes, payload: bytes) -> tuple[str, str]:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk (PNG 1.2, 4.2.3)."""
    key, _, rest = payload.partition(b"\0")
    if kind == b"tEXt":
        return key.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        return key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
    compressed, rest = rest[0], rest[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated, _, value = rest.partition(b"\0")
    return key.decode("latin-1"), (_inflate(value) if compressed else value).decode("utf-8")


def _text_chunk(key: str, value: str) -> tuple[bytes, bytes]:
    """A tEXt chunk, or iTXt (UTF-8) for a text Latin-1 cannot hold."""
    name = key.encode("latin-1", "replace")[:79]
    try:
        return b"tEXt", name + b"\0" + value.encode("latin-1")
    except UnicodeEncodeError:
        return b"iTXt", name + b"\0\0\0\0\0" + value.encode("utf-8")
