"""What a picture says about itself: EXIF kept byte for byte with only the orientation, the
pixel dimensions and the thumbnail link patched, and PNG chunks read back as written."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_dist.data import metadata
from gan_dist.data.images import encode_png
from gan_dist.data.metadata import EXIF_HEAD, Storage, neutral_exif, png_storage, png_with_metadata

MAKER_NOTE = bytes(range(40, 72))  # vendor bytes, with offsets of their own: never moved


def exif_bytes(order: str, orientation: int) -> bytes:
    """EXIF as cameras write it, in either byte order: IFD0 (make, orientation, a link to
    the Exif IFD), the Exif IFD (pixel dimensions 640x480, a maker note) and IFD1 (a
    thumbnail's IFD)."""
    mark = {"<": b"II", ">": b"MM"}[order]

    def ifd(entries: list[tuple[int, int, int, bytes]], next_ifd: int) -> bytes:
        body = struct.pack(order + "H", len(entries))
        for tag, kind, count, value in entries:
            body += struct.pack(order + "HHI", tag, kind, count) + value.ljust(4, b"\0")
        return body + struct.pack(order + "I", next_ifd)

    make_at, note_at, exif_at, ifd1_at = 200, 220, 100, 160
    ifd0 = ifd(
        [
            (0x010F, 2, 6, struct.pack(order + "I", make_at)),
            (0x0112, 3, 1, struct.pack(order + "H", orientation)),
            (0x8769, 4, 1, struct.pack(order + "I", exif_at)),
        ],
        ifd1_at,
    )
    sub = ifd(
        [
            (0xA002, 4, 1, struct.pack(order + "I", 640)),
            (0xA003, 4, 1, struct.pack(order + "I", 480)),
            (0x927C, 7, len(MAKER_NOTE), struct.pack(order + "I", note_at)),
        ],
        0,
    )
    ifd1 = ifd([(0x0103, 3, 1, struct.pack(order + "H", 6))], 0)
    data = bytearray(300)
    data[:8] = mark + struct.pack(order + "HI", 42, 8)
    data[8 : 8 + len(ifd0)] = ifd0
    data[exif_at : exif_at + len(sub)] = sub
    data[ifd1_at : ifd1_at + len(ifd1)] = ifd1
    data[make_at : make_at + 6] = b"Canon\0"
    data[note_at : note_at + len(MAKER_NOTE)] = MAKER_NOTE
    return EXIF_HEAD + bytes(data)


def read(exif: bytes):
    made = Image.Exif()
    made.load(exif)
    return made


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("turned", [1, 3, 6, 8])
def test_exif_is_kept_byte_for_byte_but_what_the_repair_changed(order, turned):
    raw = exif_bytes(order, turned)
    kept = neutral_exif(raw, turned)
    made = read(kept)
    assert made[0x010F] == "Canon"
    assert made.get(0x0112) == 1  # applied on reading: never turned twice
    quarter = turned in (6, 8)
    sub = made.get_ifd(0x8769)
    assert (sub[0xA002], sub[0xA003]) == ((480, 640) if quarter else (640, 480))
    assert sub[0x927C] == MAKER_NOTE and kept[226:258] == raw[226:258]  # where it was
    ifd0 = struct.unpack_from(order + "I", kept, 6 + 4)[0]
    assert struct.unpack_from(order + "I", kept, 6 + ifd0 + 2 + 12 * 3)[0] == 0  # no thumbnail
    changed = [i for i, (a, b) in enumerate(zip(raw, kept, strict=True)) if a != b]
    assert len(changed) <= 2 + 8 + 4  # the orientation, the dimensions, the link


def test_an_orientation_the_reader_did_not_apply_is_kept():
    """A 16-bit colour PNG is read as stored: its orientation must still turn it."""
    assert read(neutral_exif(exif_bytes("<", 6), turned=1))[0x0112] == 6


@pytest.mark.parametrize(
    "raw",
    [b"", EXIF_HEAD + b"garbage", EXIF_HEAD + b"II*\0\xff\xff\0\0", exif_bytes("<", 6)[:40]],
)
def test_exif_that_is_not_exif_is_not_kept(raw):
    assert neutral_exif(raw, 6) is None


def test_png_metadata_reads_back_as_written(tmp_path):
    storage = Storage(
        resolution=(118.11, 47.25),
        resolution_unit=3,
        icc=b"\0" * 16 + b"RGB " + bytes(200),
        text=(("Author", "me"), ("Title", "naïve ☃")),
        exif=neutral_exif(exif_bytes(">", 1)),
        description="a scan",
    )
    path = tmp_path / "a.png"
    path.write_bytes(png_with_metadata(encode_png(np.zeros((4, 5, 3), np.uint8)), storage))
    back, notes = png_storage(path)
    assert notes == [] and back.icc == storage.icc and back.exif == storage.exif
    assert back.resolution == pytest.approx(storage.resolution, abs=0.01)
    assert back.text == (*storage.text, ("Description", "a scan"))
    with Image.open(path) as im:  # and so does any other reader
        assert im.info["icc_profile"] == storage.icc and im.text["Title"] == "naïve ☃"


def test_a_png_chunk_that_inflates_too_far_is_named_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(metadata, "MAX_CHUNK", 10_000)
    bomb = b"Comment\0\0" + zlib.compress(b"x" * 20_000)
    data = encode_png(np.zeros((4, 5, 1), np.uint8))
    chunk = (
        len(bomb).to_bytes(4, "big")
        + b"zTXt"
        + bomb
        + zlib.crc32(b"zTXt" + bomb).to_bytes(4, "big")
    )
    path = tmp_path / "bomb.png"
    path.write_bytes(data[:33] + chunk + data[33:])
    storage, notes = png_storage(Path(path))
    assert storage.text == () and notes == ["PNG zTXt chunk unreadable: not kept"]
