"""The demo: real sample photos from scikit-image, packed, checked and drawn.

scikit-image ships these photos inside its wheel, so the demo needs no network and no
data of the user's. Each later stage (training, registry, repair) extends `run_demo`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SAMPLE_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "rocket",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "retina",
    "immunohistochemistry",
    "cell",
)


@dataclass
class DemoResult:
    images: Path
    shards: Path
    grid: Path


def export_sample_photos(folder: Path, names: tuple[str, ...] = SAMPLE_PHOTOS) -> list[Path]:
    """Write scikit-image's bundled photos as PNG files (skipping any already there)."""
    import numpy as np
    import skimage.data

    from gan_dist.data.images import write_png_atomic

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        path = folder / f"{name}.png"
        if not path.exists():
            arr = np.asarray(getattr(skimage.data, name)())
            arr = arr[:, :, :3] if arr.ndim == 3 else arr[:, :, None]
            write_png_atomic(path, np.ascontiguousarray(arr))
        written.append(path)
    return written


def run_demo(workdir: Path, log: Callable[[str], None] = print) -> DemoResult:
    from gan_dist.data.inspect import inspect_shards
    from gan_dist.data.pack import PackOptions, pack_folder
    from gan_dist.errors import GanDistError
    from gan_dist.recipe import resolve_damage

    images = workdir / "images"
    shards = workdir / "shards"
    grid = workdir / "shards-grid.png"
    export_sample_photos(images)
    log(f"sample photos: {images}")
    steps, label = resolve_damage("inpaint")
    options = PackOptions(
        size=128,
        crops_per_image=4,
        damage=steps,
        damage_source=label,
        val_fraction=0.2,
        shard_samples=16,
        overwrite=True,
    )
    result = pack_folder(images, shards, options)
    counts = result.manifest["counts"]
    log(f"packed {counts['train']} train + {counts['val']} val samples into {shards}")
    report = inspect_shards(shards, grid)
    if report.problems:
        raise GanDistError("demo shards failed inspection: " + "; ".join(report.problems))
    log(f"checked every shard; sample grid (damaged | mask | clean): {grid}")
    return DemoResult(images, shards, grid)
