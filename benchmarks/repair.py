"""Tiled repair: throughput and peak memory by image size, and seams.

For each size, `gan-dist repair` runs in its own process on one photo-like RGB image with a
free-form mask (scikit-image's astronaut, resized), as a user runs it; the parent reads the
child's peak RSS from the kernel (getrusage of children) and its wall time. Target: peak RSS
at 4096 px at most 1.5x that at 1024 px (memory follows the tile, not the image).

Precision: on a 1024 px image, the same model in fp32 and in bf16 (`--precision`), runs
alternating, median megapixels/s; the largest difference inside the hole (target at most
1/255) and the number of known pixels that differ (target 0).

Seams: the same model untiled (the whole image in one tile) and tiled (256 px tiles, 32 px
overlap); the difference inside the hole, in the overlaps where tiles are blended and
elsewhere. Twice: brush strokes covering 10% of a 512 px image (holes smaller than a tile),
and one 320x280 px box in a 1024 px photo, larger than a tile and across tile borders (where
tiles that each filled their own part of the hole showed a faint cross).

    python benchmarks/repair.py [--model URI] [--sizes 1024,4096] [--train-seconds 60]

Without --model it trains the quickstart recipe briefly on the demo's photos (weights change
the seam figures a little, not the speed or memory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

from gan_dist.cli.demo_flow import export_sample_photos
from gan_dist.data.damage import draw_mask
from gan_dist.data.images import read_image, resize, write_png_atomic


def quick_model(work: Path, seconds: float) -> str:
    from gan_dist.config.recipe import resolve_damage
    from gan_dist.data.pack import PackOptions, pack_folder

    export_sample_photos(work / "photos")
    steps, label = resolve_damage("inpaint")
    pack_folder(
        work / "photos",
        work / "shards",
        PackOptions(size=128, crops_per_image=8, damage=steps, damage_source=label),
    )
    sets = [
        f"data.train={work / 'shards'}",
        f"train.max_minutes={seconds / 60}",
        "tracking.enabled=false",
    ]
    cmd = [sys.executable, "-m", "gan_dist", "train", "quickstart", "--run-dir", str(work / "run")]
    subprocess.run(cmd + [a for s in sets for a in ("--set", s)], check=True, capture_output=True)
    return str(work / "run")


def test_image(work: Path, size: int, seed: int = 0) -> tuple[Path, Path, float]:
    import skimage.data

    photo = np.asarray(skimage.data.astronaut())
    img = resize(photo, size, size)
    rng = np.random.default_rng(seed)
    mask = draw_mask(size, size, "strokes", 0.1, rng)
    image_path, mask_path = work / f"img-{size}.png", work / f"mask-{size}.png"
    write_png_atomic(image_path, img)
    write_png_atomic(mask_path, mask[:, :, None])
    return image_path, mask_path, float((mask > 0).mean())


CHILD = """
import json, sys, time
from pathlib import Path
from gan_dist.repair.model_file import load_model
from gan_dist.repair.files import plan, repair_files

def high_water_mb():  # VmHWM: this process's own peak (ru_maxrss keeps the parent's at fork)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

model, image, mask, out, tile = sys.argv[1:]
loaded = load_model(model)
before = high_water_mb()
start = time.perf_counter()
planned = plan(Path(image), Path(out), Path(mask))
(result,) = repair_files(lambda: loaded, planned, int(tile), 32, 4, True)
seconds = time.perf_counter() - start
assert result.status == "repaired", result.detail
print(json.dumps({"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": high_water_mb()}))
"""


def run_repair(model: str, image: Path, mask: Path, out: Path, tile: int) -> dict:
    """What `gan-dist repair` does for one file (read, tile, blend, write), in a fresh
    process so that its peak RSS is its own."""
    cmd = [sys.executable, "-c", CHILD, model, str(image), str(mask), str(out), str(tile)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: round(v, 2) for k, v in result.items()}


def seams(model: str, work: Path, size: int, box: tuple[int, int] | None = None) -> dict:
    """Untiled vs tiled on one image: where do they differ? `box`: one (width, height) hole
    across the first tile junction instead of brush strokes."""
    from gan_dist.repair import tiles
    from gan_dist.repair.model_file import load_model
    from gan_dist.repair.tiles import _starts, repair_array

    tile, overlap = 256, 32
    repair_model = load_model(model)
    image, mask_path, _ = test_image(work, size, seed=1)
    img = read_image(image).pixels
    mask = read_image(mask_path).pixels[:, :, 0] > 127
    if box is not None:
        mask[:] = False
        (w, h), middle = box, tile - overlap // 2
        mask[middle - h // 2 : middle + h // 2, middle - w // 2 : middle + w // 2] = True
    whole = repair_array(repair_model, img, mask, tile=size, overlap=0).astype(np.float64)
    border = np.zeros_like(mask)
    for start in _starts(size, tile, tile - overlap)[1:]:  # the overlaps where tiles blend
        border[start : start + overlap, :] = True
        border[:, start : start + overlap] = True

    def against_untiled() -> dict:
        """Tiled minus untiled, in 8-bit levels, in the overlaps and elsewhere in the hole."""
        tiled = repair_array(repair_model, img, mask, tile=tile, overlap=overlap)
        diff = np.abs(whole - tiled.astype(np.float64)).max(axis=2) * 255 / np.iinfo(img.dtype).max
        return {
            "mean_levels_on_tile_borders": round(float(diff[mask & border].mean()), 3),
            "mean_levels_elsewhere": round(float(diff[mask & ~border].mean()), 3),
            "max_levels_in_hole": round(float(diff[mask].max()), 1),
            "known_pixels_changed": int((diff[~mask] > 0).sum()),
        }

    # before: every tile solved the prefill of its own part of the hole (no groups of holes
    # solved once: the net fills each tile's part itself)
    whole_groups = tiles._Prefills
    with mock.patch.object(
        tiles, "_Prefills", lambda px, m, boxes, kind, ch: whole_groups(px, m, [], kind, ch)
    ):
        per_tile = against_untiled()
    return {
        "hole_pixels": int(mask.sum()),
        "prefill_per_hole": against_untiled(),
        "prefill_per_tile": per_tile,
    }


def precisions(model: str, work: Path, size: int, tile: int, repeats: int = 3) -> dict:
    """fp32 against bf16 on one image: speed side by side, and where the outputs differ."""
    import time

    from gan_dist.core.precision import cpu_bf16
    from gan_dist.repair.model_file import load_model
    from gan_dist.repair.tiles import repair_array

    image, mask_path, _ = test_image(work, size, seed=2)
    img = read_image(image).pixels
    mask = read_image(mask_path).pixels[:, :, 0] > 127
    models = {p: load_model(model).use_precision(p) for p in ("fp32", "bf16")}
    times: dict[str, list[float]] = {p: [] for p in models}
    outputs = {}
    for _ in range(repeats + 1):  # the first round warms up
        for p, m in models.items():
            start = time.perf_counter()
            outputs[p] = repair_array(m, img, mask, tile=tile)
            times[p].append(time.perf_counter() - start)
    mp = size * size / 1e6
    rate = {p: mp / statistics.median(t[1:]) for p, t in times.items()}
    diff = np.abs(outputs["fp32"].astype(np.int64) - outputs["bf16"].astype(np.int64)).max(axis=2)
    top = np.iinfo(img.dtype).max
    return {
        "image_size": size,
        "cpu_bf16": cpu_bf16(),
        "fp32_megapixels_per_s": round(rate["fp32"], 3),
        "bf16_megapixels_per_s": round(rate["bf16"], 3),
        "speedup_bf16_over_fp32": round(rate["bf16"] / rate["fp32"], 3),
        "max_abs_diff_in_hole_255ths": round(float(diff[mask].max()) * 255 / top, 3),
        "mean_abs_diff_in_hole_255ths": round(float(diff[mask].mean()) * 255 / top, 4),
        "known_pixels_changed": int((diff[~mask] > 0).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model URI or run dir; default: train one briefly")
    parser.add_argument("--sizes", default="1024,4096")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--train-seconds", type=float, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gan-dist-repair-bench-"))
    model = args.model or quick_model(work, args.train_seconds)
    report: dict = {"benchmark": "repair", "model": model, "tile": args.tile, "sizes": {}}
    for size in sorted(int(s) for s in args.sizes.split(",")):
        image, mask, coverage = test_image(work, size)
        result = run_repair(model, image, mask, work / f"out-{size}.png", args.tile)
        result["megapixels_per_s"] = round(size * size / 1e6 / result["seconds"], 3)
        result["mask_coverage"] = round(coverage, 3)
        report["sizes"][str(size)] = result
    sizes = sorted(report["sizes"], key=int)
    if len(sizes) > 1:
        small, large = report["sizes"][sizes[0]], report["sizes"][sizes[-1]]
        report["peak_rss_ratio"] = round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)
    report["precision"] = precisions(model, work, 1024, args.tile)
    report["seams_512px_strokes"] = seams(model, work, 512)
    report["seams_1024px_box_320x280"] = seams(model, work, 1024, box=(320, 280))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
