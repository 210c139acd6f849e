"""Framework overhead and data-parallel scaling of the training step.

1. For each recipe: images/s of gan-dist's `train_step` (Accelerate-prepared nets and
   optimisers, accumulate context, loss bookkeeping) against a plain PyTorch loop written
   out below with the same nets, batch, losses and optimisers, on synthetic batches.
   Single steps interleaved, per-step medians; target trainer / plain >= 0.97.
   Both loops get the hole prefill with the batch, as the trainer's data workers provide it.
Scaling over processes is benchmarks/scaling.py.

    python benchmarks/train_step.py [--size 128] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from gan_dist.nets import build_discriminator, build_generator
from gan_dist.objectives import ADVERSARIAL, reconstruction, structural_dissimilarity
from gan_dist.recipe import load_recipe


def synthetic(recipe, device) -> dict[str, torch.Tensor]:
    from gan_dist.nets.prefill import fill_holes

    g = torch.Generator().manual_seed(0)
    b, c, s = recipe.data.batch_size, recipe.data.channels, recipe.data.image_size
    mask = (torch.rand(b, 1, s, s, generator=g) > 0.7).float()
    clean = torch.rand(b, c, s, s, generator=g) * 2 - 1
    damaged = clean * (1 - mask)
    batch = {"damaged": damaged, "clean": clean, "mask": mask}
    if recipe.model.prefill != "none":
        batch["start"] = fill_holes(damaged, 1 - mask, recipe.model.prefill)
    return {k: v.to(device) for k, v in batch.items()}


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
    damaged, clean, mask, start = b["damaged"], b["clean"], b["mask"], b.get("start")

    def step() -> bool:
        fake = G(damaged, mask, start)
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
        if obj.ssim_weight:
            loss_g = loss_g + obj.ssim_weight * structural_dissimilarity(fake, clean)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    parser.add_argument("--recipes", default="quickstart,medical")
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
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
