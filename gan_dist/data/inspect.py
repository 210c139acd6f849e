"""Read packed shards back and say what is in them.

The counts come from reading every shard, not from the manifest, and each shard's sha256 is
checked against it: inspect is how a user verifies that a pack (or a copy of it on a
cluster filesystem) is whole.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gan_dist.core.errors import GanDistError
from gan_dist.data.images import picture_grid, sample_part, write_png_atomic
from gan_dist.data.pack import SPLITS, read_manifest


@dataclass
class SplitReport:
    samples: int = 0
    shards: int = 0
    coverage_sum: float = 0.0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    channels: set[int] = field(default_factory=set)
    bit_depths: set[int] = field(default_factory=set)

    @property
    def mean_coverage(self) -> float | None:
        return self.coverage_sum / self.samples if self.samples else None


@dataclass
class InspectReport:
    folder: Path
    manifest: dict[str, Any]
    splits: dict[str, SplitReport]
    problems: list[str]
    grid: Path | None = None


def inspect_shards(folder: Path, grid: Path | None = None, grid_samples: int = 8) -> InspectReport:
    manifest = read_manifest(folder)
    splits = {split: SplitReport() for split in SPLITS}
    problems: list[str] = []
    examples: list[dict[str, np.ndarray]] = []
    has_val = any(s["split"] == "val" for s in manifest["shards"])
    grid_split = "val" if has_val else "train"  # show held-out samples when there are some
    for shard in manifest["shards"]:
        path = folder / shard["name"]
        report = splits[shard["split"]]
        report.shards += 1
        if not path.is_file():
            problems.append(f"{shard['name']}: listed in the manifest but missing")
            continue
        if _sha256(path) != shard["sha256"]:
            problems.append(f"{shard['name']}: sha256 differs from the manifest (corrupt copy?)")
        found, bad = 0, []
        try:
            for sample in _samples(path):
                found += 1
                report.samples += 1
                try:  # a bad sample is named and counted; the rest of the shard is read
                    mask = sample_part(sample, "mask")
                    clean = sample_part(sample, "clean")
                    damaged = sample_part(sample, "damaged")
                except (KeyError, ValueError) as exc:
                    what = f"missing {exc.args[0]}" if isinstance(exc, KeyError) else exc
                    bad.append(f"sample {sample.get('__key__')}: {what}")
                    continue
                report.coverage_sum += float(np.mean(mask > 0))
                report.sizes.add((clean.shape[1], clean.shape[0]))
                report.channels.add(clean.shape[2])
                report.bit_depths.add(clean.dtype.itemsize * 8)
                if grid and shard["split"] == grid_split and len(examples) < grid_samples:
                    examples.append({"damaged": damaged, "mask": mask, "clean": clean})
        except (tarfile.TarError, OSError) as exc:
            problems.append(f"{shard['name']}: unreadable after {found} samples ({exc})")
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            problems.append(f"{shard['name']}: {len(bad)} bad sample(s): {bad[0]}{more}")
        if found != shard["samples"]:
            problems.append(
                f"{shard['name']}: {found} samples, the manifest says {shard['samples']}"
            )
    expect = {
        "sizes": {(manifest["image_size"], manifest["image_size"])},
        "channels": {manifest["channels"]},
        "bit_depths": {manifest["bit_depth"]},
    }
    for split in SPLITS:
        for field_name, wanted in expect.items():
            odd = getattr(splits[split], field_name) - wanted
            if odd:
                problems.append(
                    f"{split}: samples with {field_name.replace('_', ' ')} {sorted(odd)}, the "
                    f"manifest says {sorted(wanted)[0]}"
                )
        if splits[split].samples != manifest["counts"][split]:
            problems.append(
                f"{split}: {splits[split].samples} samples read, the manifest says "
                f"{manifest['counts'][split]}"
            )
    written = None
    if grid is not None:
        if not examples:
            raise GanDistError(f"{folder}: no readable samples to draw a grid from")
        write_png_atomic(
            grid,
            picture_grid(
                [[e["damaged"], e["mask"], e["clean"]] for e in examples],
                labels=["damaged", "mask", "clean"],
            ),
        )
        written = grid
    return InspectReport(folder, manifest, splits, problems, written)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _samples(path: Path):
    """Group tar members by key (the part of the name before the first dot)."""
    current: dict[str, Any] = {}
    key = None
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base, _, ext = member.name.partition(".")
            if key is not None and base != key:
                yield current
                current = {}
            key = base
            current["__key__"] = base
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current


def describe(report: InspectReport) -> dict[str, Any]:
    """A JSON-ready summary, also what `data inspect --json` prints."""
    m = report.manifest
    return {
        "folder": str(report.folder),
        "image_size": m["image_size"],
        "codec": m.get("codec", "png"),  # packs made before the codec was a choice: png
        "channels": m["channels"],
        "bit_depth": m["bit_depth"],
        "damage_source": m.get("damage_source"),
        "splits": {
            split: {
                "samples": r.samples,
                "shards": r.shards,
                "source_images": m["source_images"][split],
                "mean_mask_coverage": None
                if r.mean_coverage is None
                else round(r.mean_coverage, 5),
                "sizes": sorted(f"{w}x{h}" for w, h in r.sizes),
                "channels": sorted(r.channels),
                "bit_depths": sorted(r.bit_depths),
            }
            for split, r in report.splits.items()
        },
        "problems": report.problems,
        "grid": str(report.grid) if report.grid else None,
        "packed_by": m["gan_dist_version"],
        "created": m["created"],
    }
