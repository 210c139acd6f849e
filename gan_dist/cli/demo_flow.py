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
    shards: Path
    run_dir: Path
    model_uri: str
    grid: Path
    tracking_uri: str
    experiment: str  # its id in the tracking store


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


def run_demo(workdir: Path, minutes: float = 2.0, log: Callable[[str], None] = print) -> DemoResult:
    """Pack -> train quickstart -> register and promote -> repair held-out photos -> grid."""
    import time

    from gan_dist.config.recipe import load_recipe, resolve_damage
    from gan_dist.core.errors import GanDistError
    from gan_dist.core.prefill import prefill_parts
    from gan_dist.data.inspect import inspect_shards
    from gan_dist.data.pack import PackOptions, pack_folder
    from gan_dist.repair.publish import promote_if_as_good, register_completed
    from gan_dist.tracking.experiments import experiment_id
    from gan_dist.tracking.stores import open_store, tracking_uri
    from gan_dist.train.trainer import train

    images, shards = workdir / "images", workdir / "shards"
    export_sample_photos(images)
    steps, label = resolve_damage("inpaint")
    prefill = load_recipe("quickstart").model.prefill
    options = PackOptions(
        size=128,
        crops_per_image=24,
        damage=steps,
        damage_source=label,
        val_fraction=0.3,  # four of the thirteen photos held out
        shard_samples=64,
        overwrite=True,
        # the fills quickstart trains from
        prefills=() if prefill == "none" else tuple(prefill_parts(prefill)),
        # decoded several times faster than PNG: on 2 cores quickstart then waits for data
        # 0.08 of the step, against 0.11 (0.31 with the prefill solved between steps)
        codec="zstd",
    )
    counts = pack_folder(images, shards, options).manifest["counts"]
    report = inspect_shards(shards)
    if report.problems:
        raise GanDistError("demo shards failed inspection: " + "; ".join(report.problems))
    log(
        f"packed {counts['train']} training and {counts['val']} held-out crops of "
        f"scikit-image's sample photos into {shards} (checked)"
    )

    recipe = load_recipe(
        "quickstart",
        [f"data.train={shards}", f"train.max_minutes={minutes}"],
    )
    run_dir = workdir / "runs" / time.strftime("quickstart-%Y%m%d-%H%M%S")
    log(f"training {recipe.name} for at most {minutes:g} min into {run_dir}")
    outcome = train(recipe, run_dir, resume="none")
    if outcome.status == "preempted":
        stopped = GanDistError(
            f"demo stopped during training; its checkpoint {outcome.checkpoint} is kept: "
            f"gan-dist train quickstart --set data.train={shards} --run-dir {run_dir}"
        )
        stopped.exit_code = 75
        raise stopped
    registered = register_completed(recipe, outcome.checkpoint) if outcome.checkpoint else None
    if registered is None:
        raise GanDistError(
            f"training finished ({outcome.checkpoint}) but the model was not registered; "
            f"see the warning above, then: gan-dist models register {run_dir} --name "
            f"{recipe.tracking.register_as}"
        )
    uri = tracking_uri(recipe)
    model_uri = f"models:/{registered.name}@champion"
    said = promote_if_as_good(registered.name, registered.version, "champion", uri)
    log(f"registered {registered.uri}; {said}: {model_uri}")

    grid = workdir / "repairs.png"
    _repair_grid(model_uri, shards, grid, uri)
    log(f"repaired held-out photos (damaged | repaired | original): {grid}")
    experiment = experiment_id(open_store(uri), recipe.tracking.experiment or recipe.name)
    return DemoResult(shards, run_dir, model_uri, grid, uri, experiment)


def _repair_grid(model_uri: str, shards: Path, grid: Path, uri: str, rows: int = 6) -> None:
    """Held-out samples through the registered model, loaded by its alias as a user would:
    taken in turn from each held-out photo, so the rows show different photos."""
    import json

    import webdataset as wds

    from gan_dist.data.images import picture_grid, sample_part, write_png_atomic
    from gan_dist.data.pack import read_manifest
    from gan_dist.data.stream import shard_urls
    from gan_dist.repair.model_file import load_model
    from gan_dist.repair.tiles import repair_array

    model = load_model(model_uri, tracking_uri=uri)
    split = "val" if read_manifest(shards)["counts"]["val"] else "train"
    by_photo: dict[str, list[dict]] = {}
    for sample in wds.WebDataset(
        shard_urls(str(shards), split), shardshuffle=False, empty_check=False
    ):
        by_photo.setdefault(json.loads(sample["json"])["source"], []).append(sample)
    chosen = [s for turn in zip(*by_photo.values(), strict=False) for s in turn][:rows]
    lines = []
    for sample in chosen:
        before, clean = sample_part(sample, "damaged"), sample_part(sample, "clean")
        after = repair_array(model, before, sample_part(sample, "mask")[:, :, 0] > 0)
        lines.append([before, after, clean])
    write_png_atomic(grid, picture_grid(lines, labels=["damaged", "repaired", "original"]))
