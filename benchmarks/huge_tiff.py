"""Repairing a huge 16-bit TIFF scan: peak memory and time, streamed against whole-image.

For each size, a synthetic 16-bit greyscale scan (smooth shading, fine grain, noise) is
written as a TIFF (256 px zlib tiles, or `--layout uncompressed`: one uncompressed piece, as
many scanners write), with a damage mask as a TIFF: scratches, dust and a few torn boxes at
the same density at every size (about 0.5% of the pixels). Then `gan-dist repair` runs in a
fresh process, as a user runs it, twice:

- `streamed`: TIFF to TIFF, read and written a band of tiles at a time;
- `whole`: the same input written as PNG (`--format png`), which decodes the whole image
  and builds the whole output in memory, as every format did before.

The child reports its own peak RSS (VmHWM) and the parent its wall time; known pixels of
the streamed output are checked bit-exact against the input on sampled bands. The model is
the quickstart recipe's generator for one channel with its initial weights (speed and
memory do not depend on the weights); 16-bit images run in fp32.

    python benchmarks/huge_tiff.py [--sizes 5000,20000] [--modes streamed,whole]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 256

CHILD = """
import atexit, sys
from pathlib import Path

def high_water(report=Path(sys.argv[1])):  # VmHWM: this process's own peak RSS
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            report.write_text(str(int(line.split()[1]) / 1024))

atexit.register(high_water)
sys.argv = ["gan-dist", *sys.argv[2:]]
from gan_dist.cli import main
main()
"""


def grey_model(folder: Path) -> Path:
    """The quickstart generator for one channel, as `models register` stores a model."""
    import torch
    from safetensors.torch import save_file

    from gan_dist.config.recipe import load_recipe
    from gan_dist.nets.build import build_generator
    from gan_dist.repair.model_file import SPEC, WEIGHTS, spec_for

    recipe = load_recipe("quickstart", ["data.channels=1"])
    torch.manual_seed(0)
    net = build_generator(recipe.model, 1, recipe.data.image_size)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS))
    (folder / SPEC).write_text(json.dumps(spec_for(recipe, 0, {})))
    return folder


def scan_tile(top: int, left: int, size: int) -> np.ndarray:
    """The synthetic scan's TILE x TILE block at (top, left), both multiples of TILE, cut at
    the image's edge: uint16, the same for every call (noise seeded by the block), so any
    band can be regenerated to check the output."""
    height, width = min(TILE, size - top), min(TILE, size - left)
    y, x = np.mgrid[top : top + height, left : left + width].astype(np.float32)
    shade = 30000 + 12000 * np.sin(x / 310) * np.cos(y / 470)
    grain = 2500 * np.sin((x + 0.7 * y) / 3.7) * np.sin((y - 0.4 * x) / 5.3)
    noise = np.random.default_rng(top * 100003 + left).normal(0, 600, (height, width))
    return np.clip(shade + grain + noise, 0, 65535).astype(np.uint16)


def scan_rows(top: int, size: int) -> np.ndarray:
    """Rows [top, top + TILE) of the scan, top a multiple of TILE."""
    return np.concatenate([scan_tile(top, left, size) for left in range(0, size, TILE)], 1)


def write_scan(path: Path, size: int, layout: str) -> None:
    import tifffile

    if layout == "uncompressed":
        mapped = tifffile.memmap(path, shape=(size, size), dtype=np.uint16)
        for top in range(0, size, TILE):
            mapped[top : top + TILE] = scan_rows(top, size)
        mapped.flush()
        del mapped
        return
    tiles = (
        scan_tile(top, left, size) for top in range(0, size, TILE) for left in range(0, size, TILE)
    )
    tifffile.imwrite(
        path, tiles, shape=(size, size), dtype=np.uint16, tile=(TILE, TILE), compression="zlib"
    )


def write_mask(path: Path, size: int, seed: int = 0) -> float:
    """Scratches, dust and torn boxes, white on black, as a tiled 8-bit TIFF; returns the
    hole fraction. Counts scale with the area, so density is the same at every size."""
    import tifffile
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    megapixels = size * size / 1e6
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(0.6 * megapixels)):  # scratches: 200-1500 px, 2-6 px wide
        x, y = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(200, 1500)
        end = (x + length * np.cos(angle), y + length * np.sin(angle))
        draw.line([(x, y), end], fill=255, width=int(rng.integers(2, 7)))
    for _ in range(int(3 * megapixels)):  # dust: radius 2-12 px
        x, y, r = *rng.uniform(0, size, 2), rng.uniform(2, 12)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    for _ in range(max(1, int(megapixels / 25))):  # torn boxes: 100-400 px
        x, y = rng.uniform(0, size - 400, 2)
        w, h = rng.uniform(100, 400, 2)
        draw.rectangle([x, y, x + w, y + h], fill=255)
    mask = np.asarray(canvas)
    tifffile.imwrite(path, mask, tile=(TILE, TILE), compression="zlib")
    return float((mask > 127).mean())


def run_repair(model: Path, image: Path, mask: Path, out: Path, size: int) -> dict:
    """`gan-dist repair` in a fresh process: wall seconds, its own peak RSS, its summary."""
    peak_file = out.with_suffix(".peak")
    cmd = [sys.executable, "-c", CHILD, str(peak_file), "repair", str(image), str(out)]
    cmd += ["--model", str(model), "--mask", str(mask), "--json", "--overwrite"]
    cmd += ["--max-pixels", str(size * size)]
    if out.suffix == ".png":
        cmd += ["--format", "png"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"repair failed ({done.returncode}): {done.stdout}{done.stderr}")
    [row] = json.loads(done.stdout)["files"]
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(float(peak_file.read_text())),
        "megapixels_per_s": round(size * size / 1e6 / seconds, 2),
        "status": row["status"],
        "output_mb": round(out.stat().st_size / 2**20, 1),
    }


def known_pixels_exact(out: Path, mask: Path, size: int, bands: int = 6) -> bool:
    """Known pixels of the output against the regenerated input, on sampled bands."""
    import tifffile
    import zarr

    with tifffile.TiffFile(out) as o, tifffile.TiffFile(mask) as m:
        repaired = zarr.open(o.pages[0].aszarr(), mode="r")
        holes = zarr.open(m.pages[0].aszarr(), mode="r")
        for top in np.linspace(0, size // TILE - 1, bands).astype(int) * TILE:
            known = holes[top : top + TILE, :] <= 127
            expected = scan_rows(top, size)
            if not np.array_equal(repaired[top : top + TILE, :][known], expected[known]):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000")
    parser.add_argument("--modes", default="streamed,whole")
    parser.add_argument("--layout", choices=("tiled", "uncompressed"), default="tiled")
    parser.add_argument("--work", type=Path, help="keep inputs and outputs here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="gan-dist-huge-tiff-"))
    work.mkdir(parents=True, exist_ok=True)
    model = grey_model(work / "model")
    report: dict = {"benchmark": "huge_tiff", "layout": args.layout, "sizes": {}}
    for size in sorted(int(s) for s in args.sizes.split(",")):
        image, mask = work / f"scan-{size}-{args.layout}.tif", work / f"mask-{size}.tif"
        write_scan(image, size, args.layout)
        entry = {"input_mb": round(image.stat().st_size / 2**20, 1)}
        entry["hole_fraction"] = round(write_mask(mask, size), 4)
        for mode in args.modes.split(","):
            out = work / "out" / f"{size}-{mode}.{'tif' if mode == 'streamed' else 'png'}"
            out.parent.mkdir(exist_ok=True)
            entry[mode] = run_repair(model, image, mask, out, size)
            if mode == "streamed":
                entry[mode]["known_pixels_exact"] = known_pixels_exact(out, mask, size)
            out.unlink()
        report["sizes"][str(size)] = entry
        print(json.dumps({str(size): entry}), file=sys.stderr, flush=True)
    sizes = sorted(report["sizes"], key=int)
    if len(sizes) > 1 and "streamed" in args.modes:
        small, large = (
            report["sizes"][s]["streamed"]["peak_rss_mb"] for s in (sizes[0], sizes[-1])
        )
        report["streamed_peak_rss_ratio"] = round(large / small, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
