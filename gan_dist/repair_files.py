"""Files in and out of `gan-dist repair`: which image goes with which mask and output file,
and the promise that nothing a user hands us is ever lost.

- Every output path is resolved (symlinks followed) before any work; a plan in which an
  output would land on an input image or a mask, inside the input or mask folder, or on
  another output is refused whole.
- Masks match images by exact relative path and full stem (`day.jpg` takes `day.png`, never
  `day.1.png`; `photo[1].jpg` takes `photo[1].png`: nothing in a name is a pattern). Two
  masks that could belong to one image fail that image, naming both.
- One binarisation rule (`read_mask`): white, above half the file's range, is a hole; a mask
  holding only the values 0 and 1 (a common export) is read with 1 as the hole, and the
  summary says so. A mask without a hole pixel has its own status (`no hole`); the image
  is written unchanged, so a folder's output is complete and no older output survives.
- Known pixels are copied exactly, at the input's depth and channels. Lossless inputs are
  written losslessly (WebP too); JPEG output re-encodes the known pixels, and the summary
  says so (`--format png` keeps them).
- Every failure that belongs to one file is a row of the summary; the folder goes on.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gan_dist.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    Picture,
    from_uint16,
    read_image,
    to_bit_depth,
    to_channels,
    write_bytes_atomic,
)
from gan_dist.errors import GanDistError
from gan_dist.models import RepairModel
from gan_dist.repair import repair_array

# what each output suffix can hold: (16-bit, alpha, lossless)
WRITABLE = {
    ".png": (True, True, True),
    ".tif": (True, True, True),
    ".tiff": (True, True, True),
    ".webp": (False, True, True),  # always written lossless
    ".bmp": (False, False, True),
    ".jpg": (False, False, False),
    ".jpeg": (False, False, False),
}
FORMATS = ("same", "png", "tif")
STATUSES = ("repaired", "failed", "skipped", "no hole")


@dataclass
class Job:
    """One image to repair: where it comes from, where it goes, its mask, and a reason it
    cannot be repaired found while planning (an ambiguous mask)."""

    image: Path
    target: Path
    mask: Path | None
    problem: str = ""


@dataclass
class FileResult:
    source: Path
    output: Path | None
    status: str  # one of STATUSES
    detail: str = ""
    seconds: float = 0.0
    size: str = ""

    def as_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def plan(
    input_path: Path, output: Path, masks: Path | None, output_format: str = "same"
) -> list[Job]:
    """A Job for every image under `input_path` (a file or a folder, searched recursively).

    Raises GanDistError, before anything is read or written, when INPUT or --mask does not
    exist, when OUTPUT's suffix cannot be written, or when any output would land on an
    input image, a mask, inside the input or mask folder, or on another output."""
    if output_format not in FORMATS:
        raise GanDistError(f"--format {output_format}: use one of {', '.join(FORMATS)}")
    source, out = input_path.resolve(), output.resolve()
    if not source.exists():
        raise GanDistError(f"{input_path}: no such file or folder")
    if masks is not None and not masks.exists():
        raise GanDistError(f"--mask {masks}: no such file or folder")
    mask_root = masks.resolve() if masks is not None else None
    if source.is_dir():
        images = sorted(p for p in source.rglob("*") if p.is_file() and _is_image(p))
        rels = [p.relative_to(source) for p in images]
        targets = [out / _output_name(rel, output_format) for rel in rels]
    else:
        images, rels = [source], [Path(source.name)]
        if out.is_dir() or output.name.endswith(("/", "\\")):
            targets = [out / _output_name(rels[0], output_format)]
        else:
            named = out.suffix.lower().lstrip(".").replace("tiff", "tif")
            if output_format != "same" and named != output_format:
                raise GanDistError(
                    f"--format {output_format} but OUTPUT {output} ends in {out.suffix}; "
                    "give one or the other"
                )
            if out.suffix.lower() not in WRITABLE:
                raise GanDistError(
                    f"OUTPUT {output}: cannot write {out.suffix or 'files without a suffix'}; "
                    f"use one of {', '.join(sorted(WRITABLE))}"
                )
            targets = [out]
    _refuse_collisions(source, images, targets, mask_root)
    jobs = []
    for image, rel, target in zip(images, rels, targets, strict=True):
        job = Job(image, target, None)
        if mask_root is not None:
            try:
                job.mask = _mask_for(mask_root, rel)
            except GanDistError as exc:
                job.problem = str(exc)
        jobs.append(job)
    return jobs


def _refuse_collisions(
    source: Path, images: list[Path], targets: list[Path], mask_root: Path | None
) -> None:
    protected = {p.resolve(): "an input image" for p in images}
    folders = [(source, "INPUT")] if source.is_dir() else []
    if mask_root is not None:
        if mask_root.is_dir():
            folders.append((mask_root, "the --mask folder"))
            protected |= {p.resolve(): "a mask" for p in mask_root.rglob("*") if p.is_file()}
        else:
            protected[mask_root] = "the mask"
    written: dict[Path, Path] = {}
    for image, target in zip(images, targets, strict=True):
        lands = target.resolve()  # follows a symlink already sitting at the output path
        if lands in protected:
            raise GanDistError(
                f"the output for {image} would overwrite {protected[lands]} ({lands}); "
                "choose another OUTPUT"
            )
        for folder, name in folders:
            if lands.is_relative_to(folder):
                raise GanDistError(
                    f"the output for {image} would land inside {name} ({lands}); "
                    "choose an OUTPUT outside it"
                )
        if lands in written:
            raise GanDistError(
                f"{written[lands]} and {image} would both be written to {lands}; "
                "rename one or repair them separately"
            )
        written[lands] = image


def repair_files(
    load: Callable[[], RepairModel],
    jobs: list[Job],
    tile: int,
    overlap: int,
    batch: int,
    overwrite: bool,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_done: Callable[[FileResult], None] = lambda r: None,
) -> list[FileResult]:
    """Repair every planned file; a file that fails is a `failed` row, never fatal.

    The model is loaded at the first file that needs it, so re-running an interrupted job
    over a folder that is already done neither downloads nor loads anything. A model that
    cannot be loaded is fatal (GanDistError): every file would fail the same way."""
    model: RepairModel | None = None
    results = []
    for job in jobs:
        started = time.perf_counter()
        if job.problem:
            result = FileResult(job.image, None, "failed", job.problem)
        elif job.target.exists() and not overwrite:
            detail = f"{job.target} exists (use --overwrite to replace it)"
            result = FileResult(job.image, None, "skipped", detail)
        else:
            model = model or load()
            started = time.perf_counter()  # the file's own time, not the model's loading
            try:
                result = _repair_one(model, job, tile, overlap, batch, max_pixels)
            except GanDistError as exc:
                result = FileResult(job.image, None, "failed", str(exc))
            except MemoryError:
                detail = "out of memory; try a smaller --tile or --batch"
                result = FileResult(job.image, None, "failed", detail)
            except Exception as exc:  # one odd file must not stop a folder: report and go on
                detail = f"{type(exc).__name__}: {exc}".strip()
                result = FileResult(job.image, None, "failed", detail)
        result.seconds = time.perf_counter() - started
        results.append(result)
        on_done(result)
    return results


def _repair_one(model, job: Job, tile, overlap, batch, max_pixels) -> FileResult:
    picture = read_image(job.image, max_pixels)
    pixels = picture.pixels
    size = f"{pixels.shape[1]}x{pixels.shape[0]} {picture.bit_depth}-bit"
    suffix = job.target.suffix.lower()
    notes = [n for n in picture.notes if n != "alpha channel dropped"]
    notes += _check_writable(suffix, picture)
    if picture.pages > 1:
        raise GanDistError(
            f"{picture.pages} pages or frames: repair writes one; split the file and repair "
            "each page"
        )
    mask, status = None, "repaired"
    composite = model.spec["model"]["composite"]
    if job.mask is not None:
        mask, rule = read_mask(job.mask, pixels.shape[:2], max_pixels)
        notes += [rule] if rule else []
        if composite and not mask.any():  # an inpainting model keeps every pixel
            status = "no hole"
            notes.insert(0, f"mask {job.mask} marks no pixel (white = hole): written unchanged")
    elif composite:
        raise GanDistError("no mask found (an inpainting model needs one: --mask FILE|DIR)")
    repaired = repair_array(model, pixels, mask, tile, overlap, batch)
    if picture.original is not None:  # float or 32-bit data: known values back exactly
        restored = picture.original.copy()
        hole = mask if mask is not None else np.ones(pixels.shape[:2], bool)
        restored[hole] = from_uint16(repaired, picture.original)[hole]
        repaired = restored
        notes = [n for n in notes if "rescaled to 0..65535" not in n]
    if picture.alpha is not None:
        if WRITABLE[suffix][1]:
            alpha = to_bit_depth(picture.alpha, repaired.dtype.itemsize * 8)
            repaired = np.concatenate([repaired, alpha[:, :, None]], axis=2)
        else:
            notes.append(f"alpha channel dropped ({suffix} output)")
    write_bytes_atomic(job.target, encode_image(repaired, suffix))
    holes = f"{mask.mean():.1%} of pixels" if mask is not None else "all pixels"
    detail = "; ".join(notes if status == "no hole" else [holes, *notes])
    return FileResult(job.image, job.target, status, detail, 0, size)


def _check_writable(suffix: str, picture: Picture) -> list[str]:
    """Before any computing: refuse an output format that would cut the pixels' depth;
    the notes a lossy one needs."""
    deep, _, lossless = WRITABLE[suffix]
    if picture.original is not None and suffix not in (".tif", ".tiff"):
        raise GanDistError(
            f"{suffix} cannot hold {picture.original.dtype} pixels; write .tif (--format tif)"
        )
    if picture.bit_depth == 16 and not deep:
        raise GanDistError(f"{suffix} cannot hold 16-bit pixels; use --format png or tif")
    if not lossless:
        return [f"{suffix} output re-encodes the known pixels (lossy); --format png keeps them"]
    return []


def read_mask(path: Path, shape: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, str]:
    """(H, W) bool hole map from a mask file, and the rule applied when it is not the usual
    one. White (above half the file's value range: 127 of 255, 32767 of 65535) is a hole;
    a mask whose only values are 0 and 1 is read with 1 as the hole. Colour masks are read
    as their luma. Raises GanDistError when the mask's size is not `shape`."""
    try:
        values = read_image(path, max_pixels).pixels
    except GanDistError as exc:
        raise GanDistError(f"mask {path}: {exc}") from None
    if values.shape[:2] != shape:
        raise GanDistError(
            f"mask {path} is {values.shape[1]}x{values.shape[0]}, the image {shape[1]}x{shape[0]}"
        )
    grey = to_channels(values, 1)[:, :, 0]
    if int(grey.max()) == 1:
        return grey == 1, "mask read as 0/1 (1 = hole)"
    return grey > np.iinfo(grey.dtype).max // 2, ""


def encode_image(arr: np.ndarray, suffix: str) -> bytes:
    """Bytes of the format the suffix names, at the array's depth (16-bit stays 16-bit);
    a 2nd or 4th channel is alpha. WebP is written lossless, JPEG at quality 95."""
    from PIL import Image

    from gan_dist.data.images import encode_png

    if suffix == ".png":
        return encode_png(arr)  # 1-4 channels at 8 or 16 bits
    if suffix in (".tif", ".tiff"):
        import tifffile

        buf = io.BytesIO()
        extra = ["unassalpha"] if arr.shape[2] in (2, 4) else None
        plane = arr[:, :, 0] if arr.shape[2] == 1 else arr
        photometric = "rgb" if arr.shape[2] >= 3 else "minisblack"
        tifffile.imwrite(
            buf, plane, photometric=photometric, extrasamples=extra, compression="zlib"
        )
        return buf.getvalue()
    if arr.dtype != np.uint8:
        raise GanDistError(f"{suffix} cannot hold 16-bit pixels; use --format png or tif")
    buf = io.BytesIO()
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}[suffix]
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True, "exact": True}}
    im.save(buf, format=fmt, **options.get(fmt, {}))
    return buf.getvalue()


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _output_name(rel: Path, output_format: str) -> Path:
    """Same relative path and format, or the --format asked for; DICOM becomes 16-bit PNG
    (we do not write DICOM)."""
    if output_format != "same":
        return rel.with_suffix("." + output_format)
    return rel.with_suffix(".png") if rel.suffix.lower() in (".dcm", ".dicom") else rel


def _mask_for(masks: Path, rel: Path) -> Path | None:
    """The mask file itself, or the one image file in the mask folder with the image's
    relative folder and full stem (any image suffix). Raises GanDistError naming both when
    two files could be the mask."""
    if masks.is_file():
        return masks
    folder = masks / rel.parent
    if not folder.is_dir():
        return None
    found = sorted(
        p for p in folder.iterdir() if p.stem == rel.stem and _is_image(p) and p.is_file()
    )
    if len(found) > 1:
        names = " and ".join(str(p) for p in found[:2])
        raise GanDistError(f"two masks could belong to this image: {names}; keep one")
    return found[0] if found else None


__all__ = ["FileResult", "Job", "encode_image", "plan", "read_mask", "repair_files"]
