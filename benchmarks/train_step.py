"""Framework overhead and data-parallel scaling of the training step.

1. For each recipe: images/s of gan-dist's `train_step` (Accelerate-prepared nets and
   optimisers, accumulate context, loss bookkeeping) against a plain PyTorch loop written
   out below with the same nets, batch, losses and optimisers, on synthetic batches.
   Single steps interleaved, per-step medians; target trainer / plain >= 0.97.
2. Aggregate images/s of `gan-dist train` (quickstart, real shards) with 2 processes
   against 1, one thread each (`OMP_NUM_THREADS=1`); target >= 1.8x.

    python benchmarks/train_step.py [--size 128] [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gan_dist.nets import build_discriminator, build_generator
from gan_dist.objectives import ADVERSARIAL, reconstruction
from gan_dist.recipe import load_recipe


def synthetic(recipe, device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b, c, s = recipe.data.batch_size, recipe.data.channels, recipe.data.image_size
    mask = (torch.rand(b, 1, s, s, generator=g) > 0.7).float()
    clean = torch.rand(b, c, s, s, generator=g) * 2 - 1
    return {
        "damaged": (clean * (1 - mask)).to(device),
        "clean": clean.to(device),
        "mask": mask.to(device),
    }


def nets(recipe, device):
    torch.manual_seed(0)
    G = build_generator(recipe.model, recipe.data.channels, recipe.data.image_size).to(device)
    D = build_discriminator(
        recipe.model.discriminator, recipe.data.channels, recipe.data.image_size
    ).to(device)
    return G, D


def adam(net, cfg):
    return torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.betas)


def trainer_step(recipe):
    """gan-dist's step with Accelerate-prepared nets and optimisers, as the trainer runs it."""
    from accelerate import Accelerator

    from gan_dist.train.trainer import train_step

    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
    G, D = nets(recipe, acc.device)
    opt_g, opt_d = adam(G, recipe.optim.generator), adam(D, recipe.optim.discriminator)
    G, D, opt_g, opt_d = acc.prepare(G, D, opt_g, opt_d)
    batch = synthetic(recipe, acc.device)

    def step() -> bool:
        losses = train_step(batch, G, D, opt_g, opt_d, recipe, acc, True)
        # the trainer's once-a-step check: both loops sync once a step
        return torch.stack([torch.isfinite(v) for v in losses.values()]).all().item()

    return step


def plain_step(recipe):
    """The same step with nothing but PyTorch: the reference for overhead."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    G, D = nets(recipe, device)
    opt_g, opt_d = adam(G, recipe.optim.generator), adam(D, recipe.optim.discriminator)
    adv, obj = ADVERSARIAL[recipe.objective.adversarial], recipe.objective
    b = synthetic(recipe, device)
    damaged, clean, mask = b["damaged"], b["clean"], b["mask"]

    def step() -> bool:
        fake = G(damaged, mask)
        real_in = torch.cat([damaged, mask, clean], 1)
        fake_in = torch.cat([damaged, mask, fake.detach()], 1)
        real_l, fake_l = D(torch.cat([real_in, fake_in])).chunk(2)
        loss_d = adv.d(real_l, fake_l)
        loss_d.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        D.requires_grad_(False)
        g_l = D(torch.cat([damaged, mask, fake], 1))
        loss_g = obj.adversarial_weight * adv.g(g_l) + reconstruction(
            fake, clean, mask, obj.l1_weight, obj.hole_l1_weight
        )
        loss_g.backward()
        D.requires_grad_(True)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        return torch.isfinite(loss_d + loss_g).item()

    return step


def overhead(name: str, size: int, steps: int) -> dict:
    """Single steps interleaved (trainer, plain, trainer, ...) so that machine noise and
    drift hit both alike; per-step medians."""
    recipe = load_recipe(
        name, [f"data.image_size={size}", "train.mixed_precision=no", "train.channels_last=false"]
    )
    loops = {"trainer": trainer_step(recipe), "plain": plain_step(recipe)}
    times: dict[str, list[float]] = {k: [] for k in loops}
    for i in range(steps + 2):
        for kind, step in loops.items():
            start = time.perf_counter()
            step()
            if i >= 2:  # warm-up
                times[kind].append(time.perf_counter() - start)
    rate = {k: recipe.data.batch_size / statistics.median(v) for k, v in times.items()}
    return {
        "image_size": size,
        "batch": recipe.data.batch_size,
        "steps": steps,
        "trainer_images_per_s": round(rate["trainer"], 2),
        "plain_images_per_s": round(rate["plain"], 2),
        "ratio_trainer_over_plain": round(rate["trainer"] / rate["plain"], 3),
    }


def scaling(steps: int, repeats: int) -> dict:
    """`gan-dist train` itself, 1 process vs 2 (gloo on CPU), one thread each, decoding in
    the main process: with data workers, one process would quietly borrow the idle core."""
    from gan_dist.data.pack import PackOptions, pack_folder
    from gan_dist.demo import export_sample_photos
    from gan_dist.recipe import resolve_damage

    work = Path(tempfile.mkdtemp())
    export_sample_photos(work / "photos")
    steps_, label = resolve_damage("inpaint")
    pack_folder(
        work / "photos",
        work / "shards",
        PackOptions(
            size=128,
            crops_per_image=8,
            damage=steps_,
            damage_source=label,
            val_fraction=0,
            shard_samples=13,
        ),
    )
    common = [
        "-m",
        "gan_dist",
        "train",
        "quickstart",
        "--set",
        f"data.train={work / 'shards'}",
        "--set",
        "data.val=null",
        "--set",
        f"train.max_steps={steps}",
        "--set",
        f"train.log_every={steps}",
        "--set",
        "train.checkpoint_every=100000",
        "--set",
        "data.workers=1",
        "--set",
        "tracking.enabled=false",
        "--resume",
        "none",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29777",
    ]

    def rate(out: str) -> float:
        return float(re.findall(r"([\d.]+) img/s", out)[-1])

    def start(prefix: list[str], run_dir: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [*prefix, *common, "--run-dir", str(run_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    runs: dict[str, list[float]] = {"1": [], "2": [], "2_independent": []}
    for i in range(repeats):
        runs["1"].append(rate(start([sys.executable], work / f"one-{i}").communicate()[0]))
        runs["2"].append(rate(start(launch, work / f"ddp-{i}").communicate()[0]))
        # the machine's own ceiling: two single-process runs at once, no communication
        pair = [start([sys.executable], work / f"pair-{i}-{j}") for j in range(2)]
        runs["2_independent"].append(sum(rate(p.communicate()[0]) for p in pair))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "recipe": "quickstart",
        "image_size": 128,
        "steps": steps,
        "images_per_s_1_process": round(med["1"], 2),
        "images_per_s_2_processes": round(med["2"], 2),
        "speedup": round(med["2"] / med["1"], 3),
        "images_per_s_2_independent_processes": round(med["2_independent"], 2),
        "ceiling_speedup_without_communication": round(med["2_independent"] / med["1"], 3),
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    parser.add_argument("--repeats", type=int, default=3, help="scaling runs per setting")
    parser.add_argument("--recipes", default="quickstart,medical")
    parser.add_argument("--scaling-steps", type=int, default=100)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {
        "benchmark": "train_step",
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "overhead": {},
    }
    for name in filter(None, args.recipes.split(",")):
        steps = args.steps if name == "quickstart" else max(8, args.steps // 3)
        report["overhead"][name] = overhead(name, args.size, steps)
    if device == "cpu":
        report["scaling"] = scaling(args.scaling_steps, args.repeats)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
