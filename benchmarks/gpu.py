"""The medical recipe on one CUDA GPU: precision, memory layout and torch.compile, side by side.

For each of fp32 / bf16 x channels_last off / on x torch.compile off / on: gan-dist's
`train_step` (Accelerate-prepared nets and optimisers, as the trainer runs it) on synthetic
256 px batches of the recipe's size (16), each configuration in its own process (Accelerate
keeps one mixed-precision setting per process): images/s (median of timed steps after
warm-up), model-FLOP utilisation against the GPU's dense bf16 peak (FLOPs per image from
`torch.utils.flop_counter.FlopCounterMode`, see gan_dist/train/flops.py), and peak memory.
Then repair throughput in bf16 and fp32 (megapixels/s of `repair_array` on a 2048 px image,
256 px tiles, batch 16; weights do not change the speed). Runs in under 8 minutes on an H100
or H200: a configuration that would start after --budget-s is reported as skipped.

    python benchmarks/gpu.py [--steps 30] [--budget-s 420]
    python benchmarks/gpu.py --device cpu --size 32 --steps 2   # checks it on a CPU-only machine
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time

import torch

from gan_dist.config.recipe import load_recipe
from gan_dist.train.flops import PEAK_BF16_FLOPS, train_step_flops

RECIPE = "medical"


def peak_flops(device: str) -> tuple[str, float | None]:
    """The GPU's name and dense bf16 peak (FLOP/s) when it is one we know."""
    if device != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name()
    for model, peak in PEAK_BF16_FLOPS.items():
        if model.split()[0] in name and ("PCIe" in model) == ("PCIe" in name):
            return name, peak
    return name, None


def one_config(precision: str, channels_last: bool, compile_: bool, args) -> dict:
    """Runs in a child process: one configuration's step rate and peak memory, through
    benchmarks/train_step.py's trainer loop (the trainer's own `train_step`)."""
    from train_step import trainer_step  # this folder's script, importable beside this one

    sets = [
        f"data.image_size={args.size}",
        f"train.mixed_precision={'no' if precision == 'fp32' else precision}",
        f"train.channels_last={str(channels_last).lower()}",
        f"train.compile={str(compile_).lower()}",
    ]
    recipe = load_recipe(RECIPE, sets)
    step = trainer_step(recipe)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        step()  # syncs once, as the trainer does
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
        if i == args.warmup - 1:
            warm_s = time.perf_counter() - started
    result = {
        "images_per_s": round(recipe.data.batch_size / statistics.median(times), 1),
        "warmup_s": round(warm_s, 1),
    }
    if cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def repair_rates(args) -> dict:
    """Megapixels/s of tiled repair with the recipe's generator, bf16 and fp32."""
    import numpy as np

    from gan_dist.nets.build import build_generator
    from gan_dist.repair.model_file import RepairModel, spec_for
    from gan_dist.repair.tiles import repair_array

    recipe = load_recipe(RECIPE, [f"data.image_size={args.size}"])
    side = args.repair_size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, (side, side, 1), dtype=np.uint16)
    mask = rng.random((side, side)) > 0.8
    out = {}
    for precision in ("bf16", "fp32"):
        net = build_generator(recipe.model, recipe.data.channels, recipe.data.image_size)
        model = RepairModel(
            net.to(args.device).eval().requires_grad_(False), spec_for(recipe, 0, {}), "random"
        ).use_precision(precision)
        warm = slice(0, 2 * args.size)
        repair_array(model, image[warm, warm], mask[warm, warm])
        times = []
        for _ in range(3):
            start = time.perf_counter()
            repair_array(model, image, mask, tile=args.size, batch=16)
            times.append(time.perf_counter() - start)
        out[f"{precision}_megapixels_per_s"] = round(side * side / 1e6 / min(times), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repair-size", type=int, default=2048)
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--config", help=argparse.SUPPRESS)  # a child: "bf16,1,0"
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu", "skipped": "no CUDA device visible"}))
        return
    if args.config:
        precision, cl, comp = args.config.split(",")
        print(json.dumps(one_config(precision, cl == "1", comp == "1", args)))
        return

    started = time.perf_counter()
    name, peak = peak_flops(args.device)
    flops = train_step_flops(load_recipe(RECIPE, [f"data.image_size={args.size}"]))
    report: dict = {
        "benchmark": "gpu",
        "device": name,
        "torch": torch.__version__,
        "recipe": RECIPE,
        "image_size": args.size,
        "train_step_gflop_per_image": round(flops / 1e9, 2),
        "peak_bf16_tflops": peak and peak / 1e12,
        "configs": {},
    }
    child = [sys.executable, __file__, "--device", args.device, "--size", str(args.size)]
    child += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    # compiled configurations last: their compilation is what may run out of budget
    for comp, precision, cl in itertools.product((0, 1), ("bf16", "fp32"), (1, 0)):
        key = f"{precision}{'_channels_last' if cl else ''}{'_compile' if comp else ''}"
        left = args.budget_s - (time.perf_counter() - started)
        if left < 30:
            report["configs"][key] = {"skipped": "out of time budget"}
            continue
        try:
            done = subprocess.run(
                [*child, "--config", f"{precision},{cl},{comp}"],
                capture_output=True,
                text=True,
                timeout=left,
            )
            line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else None
            result = json.loads(line) if line else {"error": done.stderr.strip()[-500:]}
        except subprocess.TimeoutExpired:
            result = {"skipped": "out of time budget"}
        if "images_per_s" in result and peak:
            result["mfu"] = round(result["images_per_s"] * flops / peak, 3)
        report["configs"][key] = result
        print(json.dumps({key: result}), file=sys.stderr, flush=True)
    report["repair"] = repair_rates(args)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
