"""Files in and out of `gan-dist repair`: which image goes with which mask and output file,
and the promise that nothing a user hands us is ever lost.

- Every output path is resolved (symlinks followed) before any work; a plan in which an
  output would land on an input image or a mask, inside the input or mask folder, or on
  another output is refused whole.
- Masks match images by exact relative path and full stem (`day.jpg` takes `day.png`, never
  `day.1.png`; `photo[1].jpg` takes `photo[1].png`: nothing in a name is a pattern), or by
  the stem and a mask suffix: `day_mask`, `day-mask`, LaMa's `day_mask000` (`_mask_candidates`).
  Two masks that could belong to one image fail that image, naming both; an image without
  one names the files looked for and the masks no image took. A mask folder may be the
  image folder (LaMa's layout): the masks in it are then not repaired as images.
- One binarisation rule (`read_mask`): white, above half the file's range, is a hole; a mask
  holding only the values 0 and 1 (a common export) is read with 1 as the hole, and the
  summary says so. A mask without a hole pixel has its own status (`no hole`); the image
  is written unchanged, so a folder's output is complete and no older output survives.
- Known pixels are copied exactly, at the input's depth and channels. Lossless inputs are
  written losslessly (WebP too); JPEG output is encoded with its source's tables and
  subsampling, and the summary says how far that moved the known pixels (`--format png`
  keeps them). Where the reader mapped values onto levels (DICOM), the output and the
  summary say how (`images.ValueMapping`).
- What a file says about its picture (colour profile, EXIF less the orientation applied,
  resolution, text) is written into the output in the terms its format holds
  (`data.metadata`, `_storage_for`); the summary names what a format cannot hold.
- Every failure that belongs to one file is a row of the summary; the folder goes on.
"""

from __future__ import annotations

import io
import re
import time
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gan_dist.config.family import PluginError
from gan_dist.core.errors import GanDistError
from gan_dist.core.files import atomic_file, write_bytes_atomic
from gan_dist.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    Picture,
    probe,
    raw_from_levels,
    read_image,
    shown_values,
    to_bit_depth,
    to_channels,
)
from gan_dist.data.metadata import Storage
from gan_dist.data.tiff_stream import BAND_ROWS, TiffRaster, open_tiff, write_tiff

if TYPE_CHECKING:
    from gan_dist.repair.model_file import RepairModel

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
SIDE_LIMITS = {".jpg": 65535, ".jpeg": 65535, ".webp": 16383}  # px: the formats' own limits
# what each output format holds of what a file says about its picture (`_storage_for`)
HOLDS = {
    ".png": ("colour profile", "EXIF", "resolution"),
    ".jpg": ("colour profile", "EXIF", "resolution"),
    ".jpeg": ("colour profile", "EXIF", "resolution"),
    ".webp": ("colour profile", "EXIF"),
    ".bmp": ("resolution",),
}
TILE, OVERLAP, BATCH = 256, 32, 4  # px, px, tiles per pass: `gan-dist repair`'s defaults
TIFF = (".tif", ".tiff")
STATUSES = ("repaired", "failed", "skipped", "no hole")
# who asked: a detail names the settings the way that caller sets them (`--format png` on
# the command line, `params.format=png` in a served request); `repair_bytes` sets it
_SERVED: ContextVar[bool] = ContextVar("served", default=False)


def _option(name: str, value: str = "") -> str:
    """How the caller sets option `name` (format, tile, overlap, batch), with `value` if
    given: `--format png` for `gan-dist repair`, `params.format=png` for a served request."""
    if _SERVED.get():
        return f"params.{name}={value}" if value else f"params.{name}"
    return f"--{name} {value}" if value else f"--{name}"


def _deep_output() -> str:
    """Where the caller asks for an output that holds 16 bits."""
    if _SERVED.get():
        return _option("format", "png|tif")
    return f"an OUTPUT of that suffix, or {_option('format', 'png|tif')}"


@dataclass
class Job:
    """One image to repair: where it comes from, where it goes, its mask, a reason it
    cannot be repaired found while planning (an ambiguous mask), and, when a mask folder
    held none for it, what was looked for (the reason an inpainting model fails it)."""

    image: Path
    target: Path
    mask: Path | None
    problem: str = ""
    no_mask: str = ""


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


@dataclass
class Found:
    """An image under INPUT and what `--mask` holds for it: `rel`, its path relative to
    INPUT (its name for a single file); `mask`, the one mask that matched (the --mask file
    itself when --mask is a file); `problem`, why it cannot be repaired (more than one mask
    matched); `no_mask`, when a mask folder held none for it, what was looked for."""

    image: Path
    rel: Path
    mask: Path | None
    problem: str = ""
    no_mask: str = ""


def missing_mask(no_mask: str) -> str:
    """Why an image that needs a mask has none (`no_mask`: what was looked for, from
    `find_images`): what `gan-dist repair` says, and `gan-dist eval --mask` too."""
    if no_mask:
        return f"no mask found: {no_mask}"
    where = "the mask column" if _SERVED.get() else "--mask FILE|DIR"
    return f"no mask found (an inpainting model needs one: {where})"


def find_images(input_path: Path, masks: Path | None) -> list[Found]:
    """Every image under `input_path` (a file or a folder, searched recursively, sorted) with
    its mask, matched as the module docstring says; masks found in INPUT (a mask folder
    inside it, or INPUT itself) are not listed as images. This is the one matcher: `plan`
    (repair) and `gan-dist eval --mask` both use it.

    Raises GanDistError, before anything is read, when INPUT or --mask does not exist."""
    source = input_path.resolve()
    if not source.exists():
        raise GanDistError(f"{input_path}: no such file or folder")
    if masks is not None and not masks.exists():
        raise GanDistError(f"--mask {masks}: no such file or folder")
    mask_root = masks.resolve() if masks is not None else None
    if source.is_dir():
        images = sorted(p for p in source.rglob("*") if p.is_file() and _is_image(p))
        if mask_root is not None and mask_root != source and mask_root.is_relative_to(source):
            images = [p for p in images if not p.is_relative_to(mask_root)]  # masks, not images
        rels = [p.relative_to(source) for p in images]
    else:
        images, rels = [source], [Path(input_path.name)]  # a link's own name, as given
    if mask_root is None or not mask_root.is_dir():
        return [Found(image, rel, mask_root) for image, rel in zip(images, rels, strict=True)]
    pairing = _MaskPairing(mask_root, images, rels)
    found = []
    for image, rel in zip(images, rels, strict=True):
        if pairing.is_mask(image):
            continue
        item = Found(image, rel, None)
        candidates = pairing.masks(image)
        if len(candidates) == 1:
            item.mask = candidates[0]
        elif candidates:
            names = ", ".join(str(p) for p in candidates[:-1]) + f" and {candidates[-1]}"
            item.problem = (
                f"{len(candidates)} masks could belong to this image: {names}; keep one, or "
                "repair it once per mask with --mask FILE"
            )
        else:
            item.no_mask = pairing.looked_for(image, rel)
        found.append(item)
    return found


def plan(
    input_path: Path,
    output: Path | str,
    masks: Path | None,
    output_format: str = "same",
) -> list[Job]:
    """A Job for every image under `input_path` (a file or a folder, searched recursively;
    masks matched by `find_images`). `output` is a folder when it is one, or when it is
    given as a string ending in a path separator (`out/`, as typed: a Path drops the slash).

    Raises GanDistError, before anything is read or written, when INPUT or --mask does not
    exist, when OUTPUT's suffix cannot be written, or when any output would land on an
    input image, a mask, inside the input or mask folder, on another output, or on a
    symbolic link (written through, it would replace the file the link points to)."""
    if output_format not in FORMATS:
        raise GanDistError(f"--format {output_format}: use one of {', '.join(FORMATS)}")
    as_folder = isinstance(output, str) and output.endswith(("/", "\\"))
    output = Path(output)
    # the last component unresolved: a link there is refused below, not followed
    source, out = input_path.resolve(), output.parent.resolve() / output.name
    found = find_images(input_path, masks)
    mask_root = masks.resolve() if masks is not None else None
    if source.is_dir():
        targets = [out / _output_name(item.rel, output_format) for item in found]
    elif out.is_dir() or as_folder:
        targets = [out / _output_name(found[0].rel, output_format)]
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
    _refuse_collisions(source, [item.image for item in found], targets, mask_root)
    return [
        Job(item.image, target, item.mask, item.problem, item.no_mask)
        for item, target in zip(found, targets, strict=True)
    ]


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
        lands = target.resolve()
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
        if target.is_symlink():
            raise GanDistError(
                f"the output for {image} would be written through the symbolic link {target} "
                f"(to {lands}); remove the link or choose another OUTPUT"
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
    on_rows: Callable[[int, int], None] = lambda done, height: None,
) -> list[FileResult]:
    """Repair every planned file; a file that fails is a `failed` row, never fatal.
    `on_done` gets each file's result; `on_rows` (rows done, rows in the image) follows
    the file being repaired, for images that take minutes.

    The model is loaded at the first file that needs it, so re-running an interrupted job
    over a folder that is already done neither downloads nor loads anything. A model that
    cannot be loaded, or whose plugin net breaks its contract (raises, exits, returns the
    wrong thing: a PluginError), is fatal (GanDistError): every file would fail the same
    way."""
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
                result = _repair_one(model, job, tile, overlap, batch, max_pixels, on_rows)
            except PluginError as exc:  # the model's code broke its contract: every file would
                raise GanDistError(
                    f"{model.source}: {exc}, while repairing {job.image}; no file after it "
                    "was repaired"
                ) from None
            except GanDistError as exc:
                result = FileResult(job.image, None, "failed", str(exc))
            except MemoryError:
                detail = f"out of memory; try a smaller {_option('tile')} or {_option('batch')}"
                result = FileResult(job.image, None, "failed", detail)
            except Exception as exc:  # one odd file must not stop a folder: report and go on
                detail = f"{type(exc).__name__}: {exc}".strip()
                result = FileResult(job.image, None, "failed", detail)
        result.seconds = time.perf_counter() - started
        results.append(result)
        on_done(result)
    return results


def repair_bytes(
    model: RepairModel,
    image: bytes,
    mask: bytes | None,
    output_format: str = "same",
    tile: int = TILE,
    overlap: int = OVERLAP,
    batch: int = BATCH,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    before: Callable[[Path, Path | None], None] = lambda image, mask: None,
    on_rows: Callable[[int, int], None] = lambda done, height: None,
) -> tuple[FileResult, bytes]:
    """One image file's bytes (PNG, JPEG, TIFF, BMP, WebP or DICOM, recognised by content)
    repaired exactly as `gan-dist repair` repairs the same file (same mask rule, formats,
    depth and checks), for the served model. Returns the result row (its `output` is the
    file name written, e.g. `image.png`) and the output file's bytes, empty when the row's
    status is not `repaired` or `no hole`. Never raises for a bad image or mask: that is a
    `failed` row, whose detail names settings as a request sets them (`params.format`).

    `before` gets the image and mask as files before anything is decoded; a GanDistError
    it raises fails the row with its message (the served model's time budget). `on_rows`
    is `repair_files`'; a GanDistError it raises stops the row and fails it."""
    served = _SERVED.set(True)
    try:
        return _repair_bytes(
            model, image, mask, output_format, tile, overlap, batch, max_pixels, before, on_rows
        )
    finally:
        _SERVED.reset(served)


def _repair_bytes(
    model, image, mask, output_format, tile, overlap, batch, max_pixels, before, on_rows
) -> tuple[FileResult, bytes]:
    import tempfile

    from gan_dist.data.images import suffix_of

    problem = _settings_problem(output_format, tile, overlap, batch)
    if problem:
        return FileResult(Path("image"), None, "failed", problem), b""
    if not mask and model.spec["model"]["composite"]:
        detail = "no mask: an inpainting model needs the mask file's bytes in the mask column"
        return FileResult(Path("image"), None, "failed", detail), b""
    with tempfile.TemporaryDirectory(prefix="gan-dist-serve-") as tmp:
        folder = Path(tmp)
        source = folder / "in" / "image"
        try:
            source = source.with_suffix(_named(suffix_of, image, "image"))
            mask_path = folder / f"mask{_named(suffix_of, mask, 'mask')}" if mask else None
            source.parent.mkdir()
            source.write_bytes(image)
            if mask_path is not None:
                mask_path.write_bytes(mask)
            [job] = plan(source, f"{folder / 'out'}/", mask_path, output_format)
            before(source, mask_path)
        except GanDistError as exc:
            return FileResult(Path(source.name), None, "failed", str(exc)), b""
        [result] = repair_files(
            lambda: model, [job], tile, overlap, batch, False, max_pixels, on_rows=on_rows
        )
        data = result.output.read_bytes() if result.output is not None else b""
    # the temporary folder means nothing to the caller: name the parts as they sent them
    result.detail = result.detail.replace(f"{source.parent}/", "").replace(f"{folder}/", "")
    result.source = Path(source.name)
    result.output = Path(job.target.name) if result.output is not None else None
    return result, data


def _settings_problem(output_format: str, tile: int, overlap: int, batch: int) -> str:
    """What is wrong with a served request's settings (`gan-dist repair`'s option limits),
    each named as the request sets it (`params.tile 0: ...`), or an empty string."""
    problems = [
        f"params.format {output_format!r}: use one of {', '.join(FORMATS)}"
        if output_format not in FORMATS
        else "",
        f"params.tile {tile}: use 16 or more (px)" if tile < 16 else "",
        f"params.overlap {overlap}: use 0 or more (px; at most half the tile is used)"
        if overlap < 0
        else "",
        f"params.batch {batch}: use 1 or more" if batch < 1 else "",
    ]
    return "; ".join(p for p in problems if p)


def _named(read: Callable, data: bytes, what: str):
    """`read(data)` with `what` named in its error."""
    try:
        return read(data)
    except GanDistError as exc:
        raise GanDistError(f"{what}: {exc}") from None


def _repair_one(model, job: Job, tile, overlap, batch, max_pixels, on_rows) -> FileResult:
    suffix = job.target.suffix.lower()
    with ExitStack() as stack:
        picture = _open_image(job.image, suffix, max_pixels, stack)
        height, width = picture.pixels.shape[:2]
        kind = picture.original.dtype if picture.original is not None else None
        size = f"{width}x{height} {kind or f'{picture.bit_depth}-bit'}"
        notes = [n for n in picture.notes if n != "alpha channel dropped"]
        _check_writable(suffix, picture)
        storage, told = _storage_for(suffix, picture)
        notes += told
        if picture.pages > 1:
            raise GanDistError(
                f"{picture.pages} pages or frames: repair writes one; split the file and "
                "repair each page"
            )
        mask, status = None, "repaired"
        composite = model.spec["model"]["composite"]
        if job.mask is not None:
            mask, rule = read_mask(job.mask, (height, width), max_pixels, stack)
            notes += [rule] if rule else []
            share = float(mask.mean())  # of pixels in holes: one pass over a mask of any size
            if composite and share == 0:  # an inpainting model keeps every pixel
                status = "no hole"
                said = f"mask {job.mask} marks no pixel (white = hole): its pixels kept as they are"
                notes.insert(0, said)
            elif composite and share == 1:  # nothing known: the net paints flat grey
                raise GanDistError(
                    f"mask {job.mask} marks every pixel as hole (white = hole), so nothing is "
                    "left to repair from; if black marks the holes, invert the mask"
                )
        elif composite:
            raise GanDistError(missing_mask(job.no_mask))
        from gan_dist.repair.tiles import repair_rows  # torch: not for the CLI's start-up

        rows = repair_rows(model, picture.pixels, mask, tile, overlap, batch)
        rows = _counted(rows, height, on_rows)
        mapping = picture.mapping
        if mapping is not None:  # said once, and only where the levels are what is written
            notes = [n for n in notes if n != mapping.describe()]
            if picture.original is None:
                told = mapping.as_text()
                text = told + tuple(t for t in storage.text if t[0] not in dict(told))
                storage = replace(storage, description=mapping.describe(), text=text)
                notes.append(mapping.describe())
        if picture.original is not None:  # signed, wide or float: known samples back exactly
            rows = iter([(0, _restore_original(picture, rows, mask))])
        elif storage.min_is_white:  # the samples as they were stored
            rows = ((top, np.iinfo(v.dtype).max - v) for top, v in rows)
        if picture.alpha is not None and not WRITABLE[suffix][1]:
            notes.append(f"alpha channel dropped ({suffix} output)")
        elif picture.alpha is not None:
            rows = _with_alpha(rows, picture.alpha)
        notes += _write(job.target, suffix, rows, height, storage, mask)
    holes = f"{share:.1%} of pixels" if mask is not None else "all pixels"
    detail = "; ".join(notes if status == "no hole" else [holes, *notes])
    return FileResult(job.image, job.target, status, detail, 0, size)


def _open_image(path: Path, suffix: str, max_pixels: int, stack: ExitStack):
    """A TIFF repaired into a TIFF is read in bands where its layout allows (memory stays
    flat whatever its size); anything else is decoded whole."""
    if _is_tiff(path) and suffix in TIFF:
        raster = open_tiff(path, max_pixels)
        if raster is not None:
            return stack.enter_context(raster)
    return read_image(path, max_pixels)


def _restore_original(picture: Picture, rows, mask) -> np.ndarray:
    """The samples as decoded (signed, wide or float) with only the hole pixels from the
    repair, which ran on their levels (`images.raw_from_levels`)."""
    original = picture.original
    repaired = np.concatenate([r for _, r in rows])
    restored = original.copy()
    hole = np.asarray(mask[:, :]) if mask is not None else np.ones(original.shape[:2], bool)
    new = raw_from_levels(repaired, original, picture.storage.min_is_white)
    restored[hole] = new[hole]
    return restored


def _counted(rows, height: int, on_rows: Callable[[int, int], None]) -> Iterator:
    for top, values in rows:
        on_rows(top + len(values), height)  # before: the writer stops at the last tile
        yield top, values


def _with_alpha(rows, alpha) -> Iterator[tuple[int, np.ndarray]]:
    for top, values in rows:
        kept = np.asarray(alpha[top : top + len(values), :])
        if values.dtype.kind == "u" and kept.dtype.kind == "u":  # 8-bit alpha on 16-bit
            kept = to_bit_depth(kept, values.itemsize * 8)
        yield top, np.concatenate([values, kept[:, :, None].astype(values.dtype)], axis=2)


def _write(
    target: Path,
    suffix: str,
    rows: Iterator[tuple[int, np.ndarray]],
    height: int,
    storage: Storage,
    mask: np.ndarray | TiffMask | None,
) -> list[str]:
    """Output rows (n, W, C), given top to bottom -> the file, atomically, with what
    `storage` says about the picture. TIFF is written as the rows come, tile by tile,
    stored as `storage` says; other formats are encoded from the assembled image. Returns
    what the summary should say about the file written: a lossy format's change to the
    known pixels (outside `mask`), measured on the bytes written."""
    _, first = next(rows)
    bands = chain([first], (values for _, values in rows))
    if suffix in TIFF:
        with atomic_file(target) as fh:
            bigtiff = write_tiff(fh, (height, *first.shape[1:]), first.dtype, bands, storage)
        grown = bigtiff and not storage.bigtiff  # a BigTIFF source goes without saying
        return ["written as BigTIFF (it could pass 4 GB)"] if grown else []
    image = np.concatenate(list(bands))
    data = encode_image(image, suffix, storage)
    told = [] if WRITABLE[suffix][2] or mask is None else _reencoded(data, image, mask, suffix)
    write_bytes_atomic(target, data)
    return told


def _reencoded(data: bytes, meant: np.ndarray, mask, suffix: str) -> list[str]:
    """How far a lossy file's known pixels (outside `mask`) are from what was meant, in
    levels, from its bytes decoded; nothing where no pixel is known."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        back = np.asarray(im).reshape(meant.shape)
    known = ~np.asarray(mask[:, :])
    change = np.abs(back.astype(np.int32) - meant.astype(np.int32))[known]
    if not change.size:
        return []
    return [
        f"known pixels re-encoded ({suffix}): mean change {change.mean():.2f} levels, max "
        f"{change.max()} ({_option('format', 'png')} keeps them exact)"
    ]


def _check_writable(suffix: str, picture: Picture) -> None:
    """Before any computing: refuse an output format that would cut the pixels' depth or
    cannot hold their size (it would fail at the very end)."""
    deep = WRITABLE[suffix][0]
    height, width, channels = picture.pixels.shape
    side = SIDE_LIMITS.get(suffix)
    if side is not None and max(height, width) > side:
        raise GanDistError(
            f"{suffix} cannot hold {width}x{height} px (at most {side:,} px a side); "
            f"write .png or .tif ({_option('format', 'png|tif')})"
        )
    row = -(-width * (24 if channels == 3 else 8) // 32) * 4  # BMP rows: 4-byte aligned
    if suffix == ".bmp" and 54 + 1024 + row * height >= 2**32:  # 32-bit file size field
        raise GanDistError(f"{suffix} cannot hold {width}x{height} px (4 GB); write .png or .tif")
    if picture.original is not None and suffix not in TIFF:
        raise GanDistError(
            f"{suffix} cannot hold {picture.original.dtype} pixels; write .tif "
            f"({_option('format', 'tif')})"
        )
    if picture.bit_depth == 16 and not deep:
        raise GanDistError(
            f"{suffix} cannot hold 16-bit pixels; write .png or .tif ({_deep_output()})"
        )


def _storage_for(suffix: str, picture: Picture) -> tuple[Storage, list[str]]:
    """What the output file says about its picture: the source's colour profile, EXIF,
    resolution and text, in the terms the output format holds them (`HOLDS`), and TIFF's
    own sample storage for a TIFF. The notes name what is dropped: a profile of another
    colour space than the pixels' (a CMYK JPEG's, now RGB), what the format cannot hold."""
    from gan_dist.data.metadata import (
        ICC_SPACES,
        JPEG_MAX_EXIF,
        exif_from_tags,
        exif_tiff_tags,
        icc_space,
    )

    storage, notes = picture.storage, []
    channels = picture.pixels.shape[2]
    if storage.icc is not None:
        space = icc_space(storage.icc)  # a space it does not name is not judged
        if space in ICC_SPACES and space != ("RGB" if channels == 3 else "GRAY"):
            notes.append(f"{space} colour profile dropped: the pixels are {channels}-channel")
            storage = replace(storage, icc=None)
    if suffix in TIFF:
        if storage.exif is None:
            return storage, notes
        # what a TIFF holds of EXIF: its IFD0 text, as tags of the page's own
        taken = dict((t[0], t) for t in exif_tiff_tags(storage.exif))
        description = taken.pop(270, None)
        have = {t[0] for t in storage.tags}
        tags = storage.tags + tuple(t for code, t in taken.items() if code not in have)
        if description is not None and storage.description is None:
            storage = replace(storage, description=description[3])
        notes.append("EXIF kept as TIFF tags (description, make, model, date, artist, copyright)")
        return replace(storage, tags=tags, exif=None), notes
    exif = storage.exif or exif_from_tags(storage.tags)
    if suffix in (".jpg", ".jpeg") and exif is not None and len(exif) > JPEG_MAX_EXIF:
        notes.append(f"EXIF of {len(exif):,} bytes not kept (a JPEG holds 64 kB)")
        exif = None
    held = HOLDS[suffix]
    present = {"colour profile": storage.icc, "EXIF": exif, "resolution": storage.resolution}
    lost = [name for name, value in present.items() if value and name not in held]
    if lost:
        notes.append(f"{', '.join(lost)} not kept ({suffix} cannot hold it)")
    kept = replace(
        storage,
        min_is_white=False,
        alpha="unassalpha",
        bigtiff=False,
        icc=storage.icc if "colour profile" in held else None,
        exif=exif if "EXIF" in held else None,
        resolution=storage.resolution if "resolution" in held else None,
    )
    return kept, notes


def read_mask(
    path: Path, shape: tuple[int, int], max_pixels: int, stack: ExitStack | None = None
) -> tuple[np.ndarray | TiffMask, str]:
    """(H, W) bool hole map from a mask file, and the rule applied when it is not the usual
    one. White (above half the file's value range: 127 of 255, 32767 of 65535) is a hole;
    a mask whose only values are 0 and 1 is read with 1 as the hole. Colour masks are read
    as their luma. With a `stack` to close it on, a TIFF mask is read in bands (`TiffMask`)
    instead of whole. Raises GanDistError when the mask's size is not `shape`."""
    try:
        width, height, _, _ = probe(path, max_pixels, check_values=False)
        if (height, width) != shape:  # from the header, before any pixel is decoded
            raise GanDistError(f"{width}x{height}, the image is {shape[1]}x{shape[0]}")
        raster = open_tiff(path, max_pixels) if stack is not None and _is_tiff(path) else None
        picture = read_image(path, max_pixels) if raster is None else None
    except GanDistError as exc:
        raise GanDistError(f"mask {path}: {exc}") from None
    if raster is not None:
        mask = TiffMask(stack.enter_context(raster))
        return mask, "mask read as 0/1 (1 = hole)" if mask.zero_one else ""
    if picture.pages > 1:
        raise GanDistError(f"mask {path} has {picture.pages} pages or frames; give a one-page mask")
    grey = to_channels(shown_values(picture), 1)[:, :, 0]
    zero_one = grey.dtype.kind in "iu" and grey.max() == 1
    mask = _binarise(grey, zero_one)
    return mask, "mask read as 0/1 (1 = hole)" if zero_one else ""


class TiffMask:
    """A TIFF mask read a band at a time by `read_mask`'s rule: (H, W) bool for
    [rows, columns] slices, plus numpy's `any` and `mean`. One pass over the file at
    opening finds which rule applies and counts the holes."""

    def __init__(self, raster: TiffRaster) -> None:
        self.values, self.shape, self.dtype = raster.pixels, raster.shape[:2], np.dtype(bool)
        self.path = raster.path
        peak = ones = whites = 0
        for top in range(0, self.shape[0], BAND_ROWS):
            grey = self._grey((slice(top, top + BAND_ROWS), slice(None)))
            peak = max(peak, int(grey.max()))
            ones += int(_binarise(grey, zero_one=True).sum())
            whites += int(_binarise(grey, zero_one=False).sum())
        self.zero_one = peak == 1
        self.holes = ones if self.zero_one else whites

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return _binarise(self._grey(key), self.zero_one)

    def _grey(self, key: tuple[slice, slice]) -> np.ndarray:
        try:
            return to_channels(self.values[key], 1)[:, :, 0]
        except GanDistError as exc:  # a broken mask, not a broken image
            raise GanDistError(f"mask {self.path}: {exc}") from None

    def any(self) -> bool:
        return self.holes > 0

    def mean(self) -> float:
        return self.holes / (self.shape[0] * self.shape[1])


def _binarise(grey: np.ndarray, zero_one: bool) -> np.ndarray:
    """Holes: 1 in a 0/1 mask, else above half the type's positive range (127 of 255,
    32767 of 65535, 63 of int8's 127; 0.5 for float masks, which run 0..1)."""
    if zero_one:
        return grey == 1
    return grey > (0.5 if grey.dtype.kind == "f" else np.iinfo(grey.dtype).max // 2)


def encode_image(arr: np.ndarray, suffix: str, storage: Storage | None = None) -> bytes:
    """Bytes of the format the suffix names (not TIFF: `tiff_stream.write_tiff`), at the
    array's depth (16-bit stays 16-bit); a 2nd or 4th channel is alpha. WebP is written
    lossless; JPEG with the source's quantization tables, subsampling and progression
    where `storage` has them (`metadata.JpegCoding`), else at quality 95. Each format
    carries what of `storage` it holds (`HOLDS`; PNG also its text, JPEG its comment).
    Raises GanDistError for 16-bit pixels in an 8-bit format."""
    from PIL import Image

    from gan_dist.data.images import encode_png
    from gan_dist.data.metadata import png_with_metadata

    storage = storage or Storage()
    if suffix == ".png":  # 1-4 channels at 8 or 16 bits
        return png_with_metadata(encode_png(arr), storage)
    if arr.dtype != np.uint8:
        raise GanDistError(
            f"{suffix} cannot hold 16-bit pixels; write .png or .tif ({_deep_output()})"
        )
    buf = io.BytesIO()
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}[suffix]
    options: dict[str, object] = {"icc_profile": storage.icc, "exif": storage.exif}
    dpi = _dpi(storage)
    if fmt == "JPEG":
        coding = storage.jpeg
        if coding is None:
            options["quality"] = 95
        else:
            options["qtables"] = [list(table) for table in coding.qtables]
            options |= {"subsampling": coding.subsampling} if coding.subsampling >= 0 else {}
            options["progressive"] = coding.progressive
        if storage.description:
            options["comment"] = storage.description.encode("latin-1", "replace")
        options["dpi"] = dpi
    elif fmt == "WEBP":
        options |= {"lossless": True, "exact": True}
    else:  # BMP holds a resolution only
        options = {"dpi": dpi}
    im.save(buf, format=fmt, **{k: v for k, v in options.items() if v is not None})
    return buf.getvalue()


def _dpi(storage: Storage) -> tuple[float, float] | None:
    """The resolution in pixels per inch, where `storage` has one in inches or centimetres."""
    if storage.resolution is None or storage.resolution_unit not in (2, 3):
        return None
    per_unit = 2.54 if storage.resolution_unit == 3 else 1.0
    return (storage.resolution[0] * per_unit, storage.resolution[1] * per_unit)


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _output_name(rel: Path, output_format: str) -> Path:
    """Same relative path and format, or the --format asked for; DICOM becomes 16-bit PNG
    (we do not write DICOM)."""
    if output_format != "same":
        return rel.with_suffix("." + output_format)
    return rel.with_suffix(".png") if rel.suffix.lower() in (".dcm", ".dicom") else rel


# a mask's own name for the image of stem `base`: base_mask, base-mask, and LaMa's numbered
# base_mask000, base_mask001... (one base per name: the last `_mask` is the one stripped)
_MASK_NAME = re.compile(r"(?P<base>.+)[_-](?i:mask)[0-9]*")


def _name(text: str) -> str:
    """A file name as compared: Unicode NFC, so `café` written decomposed (as macOS writes
    names) is the `café` written composed."""
    return unicodedata.normalize("NFC", text)


class _MaskPairing:
    """Which files of a mask folder could be each image's mask. For the image `a/X.jpg`
    they are the image files in MASKS/a/ of full stem `X` (any image suffix), `X_mask`,
    `X-mask` or `X_mask` plus digits, never the image itself; a file whose full stem is
    another image's own (`face_mask.png` when `face_mask.jpg` is repaired too) is that
    image's only. Where MASKS/a/ is the image's own folder (LaMa keeps `X.png` beside
    `X_mask000.png`), only the mask names count: `X.png` and `X.jpg` there are two images,
    and a file named as the mask of an image beside it is a mask, never repaired itself.

    The folder is listed once, so pairing a folder of n images costs O(n)."""

    def __init__(self, root: Path, images: list[Path], rels: list[Path]) -> None:
        self.root = root
        self.files = sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p))
        by_stem: dict[tuple[Path, str], list[Path]] = defaultdict(list)
        by_base: dict[tuple[Path, str], list[Path]] = defaultdict(list)
        for path in self.files:
            folder = Path(_name(str(path.parent.relative_to(root))))
            by_stem[folder, _name(path.stem)].append(path)
            if named := _MASK_NAME.fullmatch(_name(path.stem)):
                by_base[folder, named["base"]].append(path)
        own: dict[Path, list[Path]] = {}
        named_for: dict[Path, list[Path]] = {}
        for image, rel in zip(images, rels, strict=True):
            key = (Path(_name(str(rel.parent))), _name(rel.stem))
            shared = self._shared(image, rel)
            own[image] = [] if shared else [p for p in by_stem[key] if not _same(p, image)]
            named_for[image] = [p for p in by_base[key] if not _same(p, image)]
        claimed = {p for found in own.values() for p in found}
        self._found = {
            image: sorted(own[image] + [p for p in named_for[image] if p not in claimed])
            for image in images
        }
        self._taken = {p.resolve() for found in self._found.values() for p in found}
        self._free: list[Path] | None = None  # the masks no image took, listed on a miss

    def _shared(self, image: Path, rel: Path) -> bool:
        return (self.root / rel.parent).resolve() == image.parent.resolve()

    def is_mask(self, image: Path) -> bool:
        """Whether an input image file is some other image's mask (a shared folder)."""
        return image.resolve() in self._taken

    def masks(self, image: Path) -> list[Path]:
        """The files that could be `image`'s mask, sorted."""
        return self._found[image]

    def looked_for(self, image: Path, rel: Path) -> str:
        """For an image without a mask: the names looked for and the masks no image took,
        those in the same folder first."""
        folder, stem = self.root / rel.parent, rel.stem
        named = f"{stem}_mask.png, {stem}-mask.png or {stem}_mask000.png"
        shared = self._shared(image, rel)
        where = f"{named} beside it" if shared else f"{folder / stem}.png, {named}"
        told = f"looked for {where} (any image suffix, any number)"
        if shared and (base := _MASK_NAME.fullmatch(stem)):
            told += f"; its own name reads as a mask of {base['base']}, which is not there"
        if not folder.is_dir():
            return f"{told}; {folder} does not exist"
        if self._free is None:
            taken = self._taken | {p.resolve() for p in self._found}
            self._free = [p for p in self.files if p.resolve() not in taken]
        free = sorted(self._free, key=lambda p: p.parent != folder)  # stable: same folder first
        if not free:
            return f"{told}; every mask in {self.root} belongs to another image"
        shown = ", ".join(str(p) for p in free[:4])
        more = f" and {len(free) - 4} more" if len(free) > 4 else ""
        return f"{told}; masks no image took: {shown}{more}"


def _same(a: Path, b: Path) -> bool:
    return a == b or a.resolve() == b.resolve()


__all__ = [
    "FileResult",
    "Found",
    "Job",
    "encode_image",
    "find_images",
    "missing_mask",
    "plan",
    "read_mask",
    "repair_bytes",
    "repair_files",
]
