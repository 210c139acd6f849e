"""Images -> WebDataset shards of damaged/clean/mask triples, plus a manifest.

Nothing here leaves a half-written result that looks complete: shards are written into a
hidden staging folder inside OUT, each under a temporary name until it is closed, and only a
pack that finishes moves them into place and writes `manifest.json` last. A user's images are
only ever read. Skipped files are collected with their reasons instead of stopping the pack.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan_dist import __version__
from gan_dist.core.errors import GanDistError
from gan_dist.core.files import write_bytes_atomic
from gan_dist.core.textfiles import excerpt
from gan_dist.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    Picture,
    is_image_path,
    probe,
    read_image,
    to_bit_depth,
    to_channels,
)

if TYPE_CHECKING:
    import numpy as np

    from gan_dist.config.recipe import DamageStep

MANIFEST = "manifest.json"
STAGING = ".gan-dist-pack.partial"
SPLITS = ("train", "val")

Progress = Callable[[int, int], None]


@dataclass
class PackOptions:
    size: int = 256
    crops_per_image: int | None = None
    channels: int | None = None
    bit_depth: int | None = None
    damage: list[DamageStep] | None = None
    damage_source: str | None = None
    val_fraction: float = 0.05
    shard_samples: int = 1000
    seed: int = 0
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 32
    codec: str = "auto"  # png, zstd, or auto: zstd for 16-bit packs, png for 8-bit
    # hole prefills solved once here, for recipes whose model.prefill is one of them (see
    # `packed_prefills`), instead of at every visit of the sample during training
    prefills: tuple[str, ...] = ("biharmonic", "patchmatch")


PACKED_PREFILLS = ("biharmonic", "harmonic", "patchmatch")


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class PackResult:
    out: Path
    manifest: dict[str, Any]
    skipped: list[Skipped] = field(default_factory=list)
    notices: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def packed_images(self) -> int:
        return sum(self.manifest["source_images"].values())


@dataclass
class _Source:
    """One training image: its clean file and, in paired mode, its damaged file and mask."""

    key: str
    clean: Path
    damaged: Path | None = None
    mask: Path | None = None


# --- entry points --------------------------------------------------------------------------


def pack_folder(
    src: Path, out: Path, options: PackOptions, progress: Progress | None = None
) -> PackResult:
    """Clean images in `src` (recursively), damaged on the fly with `options.damage`."""
    if not options.damage:
        raise GanDistError("no damage configured: pass --damage PRESET|FILE")
    _check_source_dir(src, "SRC")
    _check_out_is_not(out, [(src, "SRC")])
    skipped: list[Skipped] = []
    sources = []
    inside = out.resolve()
    for path in _walk(src):
        if path.resolve().is_relative_to(inside):  # OUT inside SRC: its shards are not input
            continue
        rel = path.relative_to(src).as_posix()
        if is_image_path(path):
            sources.append(_Source(rel, path))
        else:
            skipped.append(Skipped(rel, f"not an image file ({path.suffix or 'no extension'})"))
    return _pack(sources, skipped, out, options, {"mode": "damage", "source": str(src)}, progress)


def pack_pairs(
    clean_dir: Path,
    damaged_dir: Path,
    masks_dir: Path | None,
    out: Path,
    options: PackOptions,
    progress: Progress | None = None,
) -> PackResult:
    """User-supplied damaged/clean pairs (and optional masks), matched by relative path
    without extension, so `clean/a/b.png` pairs with `damaged/a/b.jpg`."""
    _check_source_dir(clean_dir, "--clean")
    _check_source_dir(damaged_dir, "--damaged")
    if masks_dir is not None:
        _check_source_dir(masks_dir, "--masks")
    named = [(clean_dir, "--clean"), (damaged_dir, "--damaged"), (masks_dir, "--masks")]
    _check_out_is_not(out, [(folder, label) for folder, label in named if folder is not None])
    skipped: list[Skipped] = []
    clean = _index(clean_dir, "clean", skipped)
    damaged = _index(damaged_dir, "damaged", skipped)
    masks = _index(masks_dir, "masks", skipped) if masks_dir else {}
    sources = []
    for stem, path in clean.items():
        if stem not in damaged:
            skipped.append(Skipped(f"clean/{stem}", "no damaged image with this relative path"))
        elif masks_dir is not None and stem not in masks:
            skipped.append(Skipped(f"clean/{stem}", "no mask with this relative path"))
        else:
            sources.append(_Source(stem, path, damaged[stem], masks.get(stem)))
    skipped += [
        Skipped(f"damaged/{s}", "no clean image with this relative path")
        for s in damaged
        if s not in clean
    ]
    info = {
        "mode": "paired",
        "source": {
            "clean": str(clean_dir),
            "damaged": str(damaged_dir),
            "masks": str(masks_dir) if masks_dir else None,
        },
    }
    return _pack(sources, skipped, out, options, info, progress)


# --- the pack ------------------------------------------------------------------------------


def _pack(
    sources: list[_Source],
    skipped: list[Skipped],
    out: Path,
    options: PackOptions,
    info: dict[str, Any],
    progress: Progress | None,
) -> PackResult:
    import numpy as np

    started = time.perf_counter()
    _validate_options(options)
    staging, created_out, owned = _prepare_out(out, options.overwrite)
    try:
        usable, channels, depth = _probe_all(sources, skipped, options)
        val_keys = _val_split([s.key for s in usable], options.val_fraction, options.seed)
        notices: list[tuple[str, str]] = []
        sinks = {split: _ShardSink(staging, split, options.shard_samples) for split in SPLITS}
        images = dict.fromkeys(SPLITS, 0)
        coverage = dict.fromkeys(SPLITS, 0.0)
        for done, source in enumerate(usable, 1):
            split = "val" if source.key in val_keys else "train"
            try:
                samples = list(_samples(source, channels, depth, options, notices))
            except ImageReadError as exc:
                skipped.append(Skipped(source.key, str(exc)))
                samples = []
            for sample in samples:
                coverage[split] += float(np.mean(sample.pop("_mask") > 0))
                sinks[split].write(sample)
            images[split] += bool(samples)
            if progress:
                progress(done, len(usable))
        for sink in sinks.values():
            sink.close()
        counts = {split: sinks[split].total for split in SPLITS}
        if sum(counts.values()) == 0:
            first = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
            raise GanDistError(
                f"nothing packed: all {len(skipped)} input files were skipped ({first}"
                f"{'; ...' if len(skipped) > 3 else ''})"
                if skipped
                else "nothing packed: no images found"
            )
        manifest = {
            "format": "gan-dist-shards",
            "format_version": 1,
            "gan_dist_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **info,
            "image_size": options.size,
            "channels": channels,
            "bit_depth": depth,
            "codec": codec_for(options.codec, depth),
            "crops_per_image": options.crops_per_image,
            "seed": options.seed,
            "val_fraction": options.val_fraction,
            "damage": [s.model_dump(mode="json") for s in options.damage]
            if options.damage and info["mode"] == "damage"
            else None,
            "damage_source": options.damage_source if info["mode"] == "damage" else None,
            # the hole prefills each sample with holes carries (`packed_prefills`)
            "prefills": list(options.prefills),
            "counts": counts,
            "source_images": images,
            "skipped": len(skipped),
            "mean_mask_coverage": {
                split: round(coverage[split] / counts[split], 5) if counts[split] else None
                for split in SPLITS
            },
            "shards": sinks["train"].shards + sinks["val"].shards,
        }
        _commit(staging, out, manifest, owned)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return PackResult(out, manifest, skipped, notices, time.perf_counter() - started)


def _samples(
    source: _Source,
    channels: int,
    depth: int,
    options: PackOptions,
    notices: list[tuple[str, str]],
) -> Iterator[dict[str, Any]]:
    """Encoded samples for one source image (one, or one per crop)."""
    import numpy as np

    from gan_dist.data.damage import apply_damage, sample_rng
    from gan_dist.data.images import CODECS

    codec = codec_for(options.codec, depth)
    clean_pic = _load(source.clean, source.key, channels, depth, options, notices)
    clean = clean_pic.pixels
    damaged = mask = None
    if source.damaged is not None:
        damaged_pic = _load(source.damaged, source.key, channels, depth, options, notices)
        damaged = damaged_pic.pixels
        if damaged.shape[:2] != clean.shape[:2]:
            raise ImageReadError(
                f"damaged image is {damaged.shape[1]}x{damaged.shape[0]} px but the clean one "
                f"is {clean.shape[1]}x{clean.shape[0]}; pairs must match in size"
            )
        if source.mask is not None:
            mask = _load(source.mask, source.key, 1, 8, options, notices).pixels
            if mask.shape[:2] != clean.shape[:2]:
                raise ImageReadError("mask size differs from the clean image")
            mask = np.where(mask > 127, 255, 0).astype(np.uint8)
        else:
            mask = np.zeros((*clean.shape[:2], 1), dtype=np.uint8)

    crops = []
    for crop, box in enumerate(sample_boxes(clean.shape, source.key, options)):
        sample_key = f"{source.key}#{crop}"
        clean_crop = crop_resize(clean, box, options.size)
        if damaged is None:
            damaged_crop, mask_crop, applied = apply_damage(
                clean_crop, options.damage, sample_rng(options.seed, sample_key)
            )
            mask_crop = mask_crop[:, :, None]
        else:
            damaged_crop = crop_resize(damaged, box, options.size)
            mask_crop = crop_resize(mask, box, options.size)
            mask_crop = np.where(mask_crop > 127, 255, 0).astype(np.uint8)
            applied = []
        meta = {
            "source": source.key,
            "crop": crop,
            "box": list(box),
            "source_size": [int(clean.shape[1]), int(clean.shape[0])],
            "source_bit_depth": clean_pic.extra.get("source_bit_depth", depth),
            "damage": applied,
            "notes": clean_pic.notes,
            **{k: v for k, v in clean_pic.extra.items() if k != "source_bit_depth"},
        }
        crops.append((damaged_crop, clean_crop, mask_crop, meta))
    ext, encode, _ = CODECS[codec]
    # solved for all crops of the image at once: a batch costs little more than one crop
    fills = packed_prefills([c[0] for c in crops], [c[2] for c in crops], options.prefills)
    for (damaged_crop, clean_crop, mask_crop, meta), filled in zip(crops, fills, strict=True):
        yield {
            f"damaged.{ext}": encode(damaged_crop),
            f"clean.{ext}": encode(clean_crop),
            f"mask.{ext}": encode(mask_crop),
            **{f"prefill-{kind}.{ext}": encode(fill) for kind, fill in filled.items()},
            "json": json.dumps(meta, sort_keys=True).encode(),
            "_mask": mask_crop,
        }


def packed_prefills(
    damaged: list[np.ndarray], masks: list[np.ndarray], kinds: tuple[str, ...]
) -> list[dict[str, np.ndarray]]:
    """For each damaged crop (H, W, C) uint8/uint16 of one size, with its mask (H, W, 1)
    uint8 (255 = hole): {kind: its holes filled by that prefill (`nets/prefill.py`)} as
    (H, W, C) uint16 (0..65535 for [-1, 1], so a smooth fill of an 8-bit crop keeps its
    precision; 0 at known pixels, which the stream takes from the damaged crop); {} for a
    crop without holes (global damage)."""
    import numpy as np
    import torch

    from gan_dist.core.pixels import to_signed
    from gan_dist.core.prefill import fill_holes

    out: list[dict[str, np.ndarray]] = [{} for _ in damaged]
    holed = [i for i, m in enumerate(masks) if m.any()]
    if not kinds or not holed:
        return out
    images = np.stack([damaged[i].transpose(2, 0, 1) for i in holed])
    image = torch.from_numpy(to_signed(images))
    known = torch.from_numpy(np.stack([masks[i][:, :, 0] == 0 for i in holed])[:, None]).float()
    for kind in kinds:
        fill = fill_holes(image, known, kind).add(1).mul(32767.5).round() * (1 - known)
        fill = fill.permute(0, 2, 3, 1).numpy().astype(np.uint16)  # 0 outside: compresses
        for j, i in enumerate(holed):
            out[i][kind] = fill[j]
    return out


def _load(
    path: Path,
    key: str,
    channels: int,
    depth: int,
    options: PackOptions,
    notices: list[tuple[str, str]],
) -> Picture:
    pic = read_image(path, options.max_pixels)
    source_depth = pic.bit_depth
    if pic.channels != channels:
        pic.notes.append(f"{pic.channels} channel(s) converted to {channels}")
    if source_depth != depth:
        pic.notes.append(f"{source_depth}-bit converted to {depth}-bit")
    pic.pixels = to_bit_depth(to_channels(pic.pixels, channels), depth)
    pic.extra["source_bit_depth"] = source_depth
    notices.extend((key, note) for note in pic.notes)
    return pic


def sample_boxes(
    shape: tuple[int, ...], key: str, options: PackOptions
) -> list[tuple[int, int, int, int]]:
    """Source rectangles (x, y, w, h): one centred square (resized to `size` later), or
    `crops_per_image` random squares of exactly `size` at native resolution."""
    from gan_dist.data.damage import sample_rng

    height, width = shape[:2]
    size = options.size
    if options.crops_per_image is None:
        side = min(width, height)
        return [((width - side) // 2, (height - side) // 2, side, side)]
    if width < size or height < size:
        raise ImageReadError(f"{width}x{height} px is smaller than the {size} px crop")
    rng = sample_rng(options.seed, f"{key}#crops")
    return [
        (
            int(rng.integers(0, width - size + 1)),
            int(rng.integers(0, height - size + 1)),
            size,
            size,
        )
        for _ in range(options.crops_per_image)
    ]


def crop_resize(arr: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    from gan_dist.data.images import resize

    x, y, w, h = box
    return resize(arr[y : y + h, x : x + w], size, size)


# --- helpers -------------------------------------------------------------------------------


def _validate_options(options: PackOptions) -> None:
    from gan_dist.config.recipe import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

    problems = []
    if not MIN_IMAGE_SIZE <= options.size <= MAX_IMAGE_SIZE:
        problems.append(
            f"--size must be {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px: the smallest the nets "
            f"train on, the largest a training sample can sensibly be (got {options.size})"
        )
    if not 0 <= options.seed < 2**63:
        problems.append(f"--seed must be in 0..2**63-1 (got {options.seed})")
    if options.crops_per_image is not None and options.crops_per_image < 1:
        problems.append("--crops-per-image must be at least 1")
    if options.channels not in (None, 1, 3):
        problems.append(f"--channels must be 1 or 3 (got {options.channels})")
    if options.bit_depth not in (None, 8, 16):
        problems.append(f"--bit-depth must be 8 or 16 (got {options.bit_depth})")
    if options.codec not in ("auto", "png", "zstd"):
        problems.append(f"--codec must be auto, png or zstd (got {options.codec})")
    if not 0.0 <= options.val_fraction < 1.0:
        problems.append(f"--val-fraction must be in [0, 1) (got {options.val_fraction})")
    if options.shard_samples < 1:
        problems.append("--shard-samples must be at least 1")
    odd = [k for k in options.prefills if k not in PACKED_PREFILLS]
    if odd:
        problems.append(
            f"--prefill takes {', '.join(PACKED_PREFILLS)} or none, comma-separated "
            f"(got {', '.join(excerpt(k, 40) for k in odd[:3])})"
        )
    if problems:
        raise GanDistError("; ".join(problems))


def _check_source_dir(path: Path, label: str) -> None:
    if not path.exists():
        raise GanDistError(f"{label} {path} does not exist")
    if not path.is_dir():
        raise GanDistError(f"{label} {path} is not a directory")
    if next(_walk(path), None) is None:
        raise GanDistError(f"{label} {path} holds no files")


def _check_out_is_not(out: Path, sources: list[tuple[Path, str]]) -> None:
    for folder, label in sources:
        if out.resolve() == folder.resolve():
            raise GanDistError(f"OUT is {label} ({folder}): shards go to a folder of their own")


def _walk(root: Path) -> Iterator[Path]:
    """Files below root in a stable order, hidden files and folders left out."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield path


def _index(root: Path, label: str, skipped: list[Skipped]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in _walk(root):
        rel = path.relative_to(root)
        if not is_image_path(path):
            skipped.append(Skipped(f"{label}/{rel.as_posix()}", "not an image file"))
            continue
        stem = rel.with_suffix("").as_posix()
        if stem in found:
            skipped.append(
                Skipped(f"{label}/{rel.as_posix()}", f"same relative path as {found[stem].name}")
            )
            continue
        found[stem] = path
    return found


def _prepare_out(out: Path, overwrite: bool) -> tuple[Path, bool, set[str]]:
    """The staging folder inside OUT, whether OUT was created, and the names of the files
    an earlier pack wrote there (read once: these, and only these, are replaced at the
    end). Refuses an OUT that holds a pack unless `overwrite`, and, even with it, any file
    a new pack would replace that no gan-dist manifest there lists."""
    if out.exists() and not out.is_dir():
        raise GanDistError(f"OUT {out} exists and is not a directory")
    owned: set[str] = set()
    if out.is_dir():
        owned = _old_pack(out)
        if owned and not overwrite:
            raise GanDistError(
                f"OUT {out} already holds packed shards ({len(owned) - 1} listed in its "
                f"{MANIFEST}); pass --overwrite to replace them or choose another folder"
            )
        foreign = sorted(
            p.name for p in out.iterdir() if _is_pack_output(p.name) and p.name not in owned
        )
        if foreign:
            raise GanDistError(
                f"OUT {out} holds {foreign[0]}, which no gan-dist {MANIFEST} there lists; "
                "a pack never replaces files it did not write: choose another folder"
            )
    created = not out.exists()
    staging = out / STAGING
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted pack
        staging.mkdir()
        probe_file = staging / ".write-test"
        probe_file.write_bytes(b"")
        probe_file.unlink()
    except OSError as exc:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise GanDistError(f"OUT {out} is not writable: {exc.strerror or exc}") from None
    return staging, created, owned


def _is_pack_output(name: str) -> bool:
    """A name a pack writes: the manifest or a shard (`train-000000.tar`)."""
    return name == MANIFEST or re.fullmatch(rf"({'|'.join(SPLITS)})-\d{{6}}\.tar", name) is not None


def _old_pack(out: Path) -> set[str]:
    """Names of the files an earlier pack wrote to `out` (its manifest's shards and the
    manifest), or an empty set when it holds no gan-dist manifest."""
    if not (out / MANIFEST).exists():
        return set()
    try:
        names = {str(shard["name"]) for shard in read_manifest(out)["shards"]}
    except (GanDistError, KeyError, TypeError):
        raise GanDistError(
            f"OUT {out} holds a {MANIFEST} that is not a readable gan-dist manifest; "
            "choose another folder"
        ) from None
    # a listed name is only trusted when it is one a pack writes: never a path elsewhere
    return {MANIFEST} | {name for name in names if _is_pack_output(name)}


def _probe_all(
    sources: list[_Source], skipped: list[Skipped], options: PackOptions
) -> tuple[list[_Source], int, int]:
    """Header pass: drop unreadable/oversized/tiny files before decoding anything, and settle
    channels (1 only if every image is greyscale) and bit depth (the deepest source)."""
    usable, greyscale, depths = [], True, set()
    for source in sources:
        try:
            for path in filter(None, (source.clean, source.damaged)):
                width, height, channels, depth = probe(path, options.max_pixels)
                if min(width, height) < options.min_side:
                    raise ImageReadError(
                        f"too small ({width}x{height} px; the minimum side is {options.min_side})"
                    )
                greyscale &= channels == 1
                depths.add(depth)
        except ImageReadError as exc:
            skipped.append(Skipped(source.key, str(exc)))
            continue
        usable.append(source)
    channels = options.channels or (1 if greyscale and usable else 3)
    depth = options.bit_depth or (max(depths) if depths else 8)
    return usable, channels, depth


def codec_for(asked: str, depth: int) -> str:
    """The codec of a pack's image parts: `auto` is zstd-compressed arrays for 16-bit packs
    (PNG decoding of noisy 16-bit scans is what limits the samples one core feeds a GPU)
    and PNG for 8-bit ones (smaller, and as fast as the step needs)."""
    if asked == "auto":
        return "zstd" if depth == 16 else "png"
    return asked


MIN_VAL_SOURCES = 4  # source images held out at least, where there are 20 or more


def _val_split(keys: list[str], fraction: float, seed: int) -> set[str]:
    """Split by source image (all crops of one image land in one split, so validation never
    sees training pixels), by a seeded hash so adding images leaves others where they were."""
    if fraction <= 0 or len(keys) < 2:
        return set()
    # surrogateescape: a name that is not UTF-8 (a byte the file system allows) still hashes
    ranked = sorted(
        keys,
        key=lambda k: hashlib.blake2b(f"{seed}:{k}".encode("utf-8", "surrogateescape")).digest(),
    )
    # a small folder still holds out a few images (a fifth at most), so that validation and
    # the repair grid are not crops of one photo
    count = max(round(fraction * len(keys)), min(MIN_VAL_SOURCES, len(keys) // 5), 1)
    return set(ranked[: min(len(keys) - 1, count)])


class _ShardSink:
    """Numbered shards of one split; each written under a temporary name and renamed when
    closed, with its sample count and sha256 recorded for the manifest."""

    def __init__(self, folder: Path, split: str, per_shard: int) -> None:
        self.folder, self.split, self.per_shard = folder, split, per_shard
        self.shards: list[dict[str, Any]] = []
        self.total = 0
        self._writer = None
        self._count = 0
        self._index = 0

    def write(self, sample: dict[str, Any]) -> None:
        import webdataset as wds

        if self._writer is None:
            self._name = f"{self.split}-{self._index:06d}.tar"
            self._tmp = self.folder / f".{self._name}.partial"
            self._writer = wds.TarWriter(str(self._tmp), encoder=False, mtime=0)
        self._writer.write({"__key__": f"{self.split}{self.total:08d}", **sample})
        self._count += 1
        self.total += 1
        if self._count == self.per_shard:
            self._finish()

    def close(self) -> None:
        if self._writer is not None:
            self._finish()

    def _finish(self) -> None:
        self._writer.close()
        digest = hashlib.sha256()
        with open(self._tmp, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        self._tmp.rename(self.folder / self._name)
        self.shards.append(
            {
                "name": self._name,
                "split": self.split,
                "samples": self._count,
                "bytes": (self.folder / self._name).stat().st_size,
                "sha256": digest.hexdigest(),
            }
        )
        self._writer, self._count = None, 0
        self._index += 1


def _commit(staging: Path, out: Path, manifest: dict[str, Any], owned: set[str]) -> None:
    """Old outputs (`owned`) go only now that the new ones are complete; the manifest comes
    last, so a folder with a manifest always holds every shard it lists."""
    for name in owned:
        (out / name).unlink(missing_ok=True)
    for shard in manifest["shards"]:
        (staging / shard["name"]).rename(out / shard["name"])
    write_bytes_atomic(out / MANIFEST, json.dumps(manifest, indent=2).encode())
    shutil.rmtree(staging, ignore_errors=True)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise GanDistError(f"{folder} is not a directory of packed shards")
    if not path.is_file():
        hint = " (an interrupted pack left it incomplete)" if (folder / STAGING).exists() else ""
        raise GanDistError(f"{folder} has no {MANIFEST}{hint}; pack it with `gan-dist data pack`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GanDistError(f"{path}: unreadable manifest ({exc})") from None
    if manifest.get("format") != "gan-dist-shards":
        raise GanDistError(f"{path}: not a gan-dist shard manifest")
    return manifest
