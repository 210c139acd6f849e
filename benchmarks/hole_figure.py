"""A hole in a textured photograph, repaired at full size: what a person sees, not a metric.

Cuts a region of a held-out photograph at native resolution (default: the gravel beach of
EveningGlow, from Debian's wallpapers, which no quality-benchmark model trains on), punches a
box and a brush stroke into it, and repairs it four ways: the biharmonic prefill alone
(what the smooth-prefill nets start from), the model through `gan-dist repair`'s own tiled
path, scikit-image's exact biharmonic solve (the best classical fidelity), and PatchMatch
(Barnes et al. 2009, `pypatchmatch` with radius 3: the classical texture). Writes one
labelled PNG at 1:1 pixels and prints JSON: hole PSNR (dB) and the hole's grain against the
original's. Grain is the standard deviation of the image minus its 5x5 box blur (levels of
255), the fine texture a smooth fill lacks: a ratio of 1 keeps the photograph's grain, near
0 is a flat patch whatever the PSNR.

    python benchmarks/hole_figure.py --model RUN_DIR_OR_URI --out docs/hole-repair.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# The gravel at the foot of EveningGlow (2560x1600): fine, even grain, the hardest case for
# a smooth fill. x, y, width, height in px.
DEFAULT_PHOTO = "EveningGlow"
DEFAULT_REGION = (1320, 1240, 384, 256)


def damage(height: int, width: int) -> np.ndarray:
    """(H, W) bool: a 96x96 px box and a brush stroke, about 15% of the region."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((width // 2 - 48, height // 2 - 48, width // 2 + 47, height // 2 + 47), 255)
    draw.line([(20, height - 30), (width // 4, height // 3), (width // 3, 24)], 255, width=14)
    return np.asarray(canvas) > 0


def grain(pixels: np.ndarray, hole: np.ndarray) -> float:
    """Std (levels of 255) of the image minus its 5x5 box blur, over the hole's pixels."""
    from scipy.ndimage import uniform_filter

    img = pixels.astype(np.float64)
    detail = img - uniform_filter(img, size=(5, 5, 1), mode="reflect")
    return float(detail[hole].std())


def hole_psnr(pred: np.ndarray, target: np.ndarray, hole: np.ndarray) -> float:
    err = (pred.astype(np.float64) - target.astype(np.float64))[hole]
    return float(10 * np.log10(255.0**2 / max(np.mean(err**2), 1e-12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run directory, model folder or URI")
    parser.add_argument("--photo", type=Path, help=f"default: {DEFAULT_PHOTO} (wallpapers)")
    parser.add_argument("--region", default=",".join(map(str, DEFAULT_REGION)))
    parser.add_argument("--out", type=Path, default=Path("hole-repair.png"))
    args = parser.parse_args()

    import torch
    from skimage.restoration import inpaint_biharmonic

    from gan_dist.core.exemplar import patchmatch_fill
    from gan_dist.core.prefill import fill_holes
    from gan_dist.data.images import picture_grid, read_image, write_png_atomic
    from gan_dist.repair.model_file import load_model
    from gan_dist.repair.tiles import repair_array

    photo, name = args.photo, args.photo and args.photo.name
    if photo is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from quality import wallpaper_photos

        found = wallpaper_photos()
        if isinstance(found, str):
            raise SystemExit(f"{DEFAULT_PHOTO}: {found}; give --photo")
        photo, name = found[DEFAULT_PHOTO], DEFAULT_PHOTO
    x, y, width, height = (int(v) for v in args.region.split(","))
    original = read_image(photo).pixels[y : y + height, x : x + width, :3]
    hole = damage(*original.shape[:2])
    damaged = original.copy()
    damaged[hole] = 0

    model = load_model(args.model)
    repaired = repair_array(model, damaged, hole)
    as_tensor = torch.from_numpy(damaged).permute(2, 0, 1)[None].float() / 127.5 - 1
    known = torch.from_numpy(~hole)[None, None].float()
    start = fill_holes(as_tensor, known, "biharmonic")[0].permute(1, 2, 0).numpy()
    prefill = np.round((start + 1) * 127.5).clip(0, 255).astype(np.uint8)
    exact = inpaint_biharmonic(damaged / 255.0, hole, channel_axis=-1)
    biharmonic = np.round(exact * 255).clip(0, 255).astype(np.uint8)
    copied = patchmatch_fill(as_tensor, known)[0].permute(1, 2, 0).numpy()
    patchmatch = np.round((copied + 1) * 127.5).clip(0, 255).astype(np.uint8)

    columns = {"damaged": damaged, "prefill": prefill, "biharmonic": biharmonic}
    columns |= {"patchmatch": patchmatch}
    columns |= {"repaired": repaired, "original": original}
    write_png_atomic(args.out, picture_grid([list(columns.values())], labels=list(columns)))
    truth = grain(original, hole)
    report = {
        "photo": name,
        "region": [x, y, width, height],
        "hole_share": round(float(hole.mean()), 3),
        "model": args.model,
        "figure": str(args.out),
        "original_grain": round(truth, 2),
    }
    for name in ("prefill", "biharmonic", "patchmatch", "repaired"):
        report[name] = {
            "hole_psnr": round(hole_psnr(columns[name], original, hole), 2),
            "grain_ratio": round(grain(columns[name], hole) / truth, 3),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
