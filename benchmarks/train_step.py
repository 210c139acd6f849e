"""Framework overhead of the training step, in fp32 and in bf16 mixed precision.

For each recipe, four loops on the same synthetic batches, single steps interleaved (so that
machine noise and drift hit all alike), per-step medians:

- `trainer_fp32`, `trainer_bf16`: gan-dist's `train_step` (Accelerate-prepared nets and
  optimisers, accumulate context, loss bookkeeping); bf16 is `train.mixed_precision: bf16`
  with `train.channels_last: true`, exactly as the trainer sets them up;
- `plain_fp32`, `plain_bf16`: a plain PyTorch loop written out below with the same nets,
  batch, losses and optimisers; bf16 there is `torch.autocast` around the nets plus
  channels_last nets and inputs.

Targets: trainer / plain >= 0.97 in each precision (overhead), and trainer_bf16 /
plain_fp32 >= 1.8 for quickstart at 128 px on a CPU with bf16 instructions. All loops get the
hole prefill with the batch, as the trainer's data workers provide it. The CPU's bf16 support
and the instruction set oneDNN picks for a bf16 convolution are in the report.
End to end, with its data: `gan-dist train quickstart` (photo crops packed as the demo packs
them, the hole prefill and decoding in the loop) at the recipe's defaults, against the same
recipe forced to fp32 (`--set train.mixed_precision=no`), and forced to fp32 with
channels_last off as well (the recipe before bf16 became its default); runs alternating,
images/s from the progress lines after the first tenth, medians. Target: defaults / fp32
with channels_last off >= 1.7x on a CPU with bf16 instructions.
Scaling over processes is benchmarks/scaling.py.

    python benchmarks/train_step.py [--size 128] [--steps 30] [--e2e-steps 80 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from gan_dist.config.recipe import load_recipe
from gan_dist.nets.build import build_discriminator, build_generator
from gan_dist.train.losses import adversarial_for, reconstruction, structural_dissimilarity


def synthetic(recipe, device, fmt=torch.contiguous_format) -> dict[str, torch.Tensor]:
    from gan_dist.core.prefill import fill_holes

    g = torch.Generator().manual_seed(0)
    b, c, s = recipe.data.batch_size, recipe.data.channels, recipe.data.image_size
    mask = (torch.rand(b, 1, s, s, generator=g) > 0.7).float()
    clean = torch.rand(b, c, s, s, generator=g) * 2 - 1
    damaged = clean * (1 - mask)
    batch = {"damaged": damaged, "clean": clean, "mask": mask}
    if recipe.model.prefill != "none" and torch.device(device).type == "cpu":
        # as the trainer's CPU data path gives it; on a GPU the generator fills the holes
        batch["start"] = fill_holes(damaged, 1 - mask, recipe.model.prefill)
    return {k: v.to(device).contiguous(memory_format=fmt) for k, v in batch.items()}


def nets(recipe, device, fmt=torch.contiguous_format):
    torch.manual_seed(0)
    G = build_generator(recipe.model, recipe.data.channels, recipe.data.image_size)
    D = build_discriminator(
        recipe.model.discriminator, recipe.data.channels, recipe.data.image_size
    )
    return G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)


def adam(net, cfg):
    return torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.betas)


def with_precision(recipe, bf16: bool):
    """The recipe in fp32, or in bf16 mixed precision with channels_last as users set it."""
    sets = (
        ["train.mixed_precision=bf16", "train.channels_last=true"]
        if bf16
        else [
            "train.mixed_precision=no",
            "train.channels_last=false",
        ]
    )
    return load_recipe(recipe.name, [f"data.image_size={recipe.data.image_size}", *sets])


def trainer_step(recipe):
    """gan-dist's step with Accelerate-prepared nets and optimisers, as the trainer runs it."""
    from accelerate import Accelerator

    from gan_dist.core.precision import effective_precision
    from gan_dist.train.step import Nets, train_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision, _ = effective_precision(recipe.train.mixed_precision, device)
    acc = Accelerator(cpu=device == "cpu", mixed_precision=precision)
    fmt = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    G, D = nets(recipe, acc.device, fmt)
    if recipe.train.compile:
        G, D = torch.compile(G), torch.compile(D)
    opt_g, opt_d = adam(G, recipe.optim.generator), adam(D, recipe.optim.discriminator)
    prepared = Nets(*acc.prepare(G, D, opt_g, opt_d))
    batch = synthetic(recipe, acc.device)

    def step() -> bool:
        losses = train_step(
            batch,
            prepared,
            recipe.objective,
            acc,
            update_g=True,
            grad_clip=recipe.optim.grad_clip,
            channels_last=recipe.train.channels_last,
        )
        # the trainer's once-a-step check: both loops sync once a step
        return torch.stack([torch.isfinite(v) for v in losses.values()]).all().item()

    return step


def plain_step(recipe):
    """The same step with nothing but PyTorch: the reference for overhead."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = recipe.train.mixed_precision == "bf16"
    fmt = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    G, D = nets(recipe, device, fmt)
    opt_g, opt_d = adam(G, recipe.optim.generator), adam(D, recipe.optim.discriminator)
    adv, obj = adversarial_for(recipe.objective), recipe.objective
    b = synthetic(recipe, device, fmt)
    damaged, clean, mask, start = b["damaged"], b["clean"], b["mask"], b.get("start")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> bool:
        with autocast():
            # the repair leaves autocast in fp32, as Accelerate's prepared nets return it,
            # so that the losses are computed in fp32
            fake = G(damaged, mask, start).float()
            real_in = torch.cat([damaged, mask, clean], 1)
            fake_in = torch.cat([damaged, mask, fake.detach()], 1)
            real_l, fake_l = D(torch.cat([real_in, fake_in])).float().chunk(2)
        loss_d = adv.d(real_l, fake_l)
        loss_d.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        D.requires_grad_(False)
        with autocast():
            g_l = D(torch.cat([damaged, mask, fake], 1)).float()
        loss_g = obj.adversarial_weight * adv.g(g_l).mean() + reconstruction(
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


def interleaved(loops: dict, steps: int, batch: int) -> dict[str, float]:
    """Single steps interleaved (a, b, c, a, b, c, ...) so that machine noise and drift hit
    all loops alike; images/s from per-step medians after two warm-up rounds."""
    times: dict[str, list[float]] = {k: [] for k in loops}
    for i in range(steps + 2):
        for kind, step in loops.items():
            start = time.perf_counter()
            step()
            if i >= 2:
                times[kind].append(time.perf_counter() - start)
    return {k: batch / statistics.median(v) for k, v in times.items()}


def overhead(name: str, size: int, steps: int) -> dict:
    """Two phases, each interleaved: fp32 (trainer, plain), then bf16 (trainer, plain fp32,
    plain bf16). Accelerate keeps one mixed-precision setting per process, so the trainer's
    fp32 and bf16 loops cannot alternate; it is reset between the phases."""
    from accelerate.state import AcceleratorState

    base = load_recipe(name, [f"data.image_size={size}"])
    fp32, bf16 = with_precision(base, False), with_precision(base, True)
    batch = base.data.batch_size
    first = interleaved({"trainer": trainer_step(fp32), "plain": plain_step(fp32)}, steps, batch)
    AcceleratorState._reset_state(reset_partial_state=True)
    second = interleaved(
        {
            "trainer_bf16": trainer_step(bf16),
            "plain_fp32": plain_step(fp32),
            "plain_bf16": plain_step(bf16),
        },
        steps,
        batch,
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    return {
        "image_size": size,
        "batch": batch,
        "steps": steps,
        "fp32": {
            "trainer_images_per_s": round(first["trainer"], 2),
            "plain_images_per_s": round(first["plain"], 2),
            "ratio_trainer_over_plain": round(first["trainer"] / first["plain"], 3),
        },
        "bf16": {
            "trainer_bf16_images_per_s": round(second["trainer_bf16"], 2),
            "plain_fp32_images_per_s": round(second["plain_fp32"], 2),
            "plain_bf16_images_per_s": round(second["plain_bf16"], 2),
            "speedup_trainer_bf16_over_plain_fp32": round(
                second["trainer_bf16"] / second["plain_fp32"], 3
            ),
            "ratio_trainer_bf16_over_plain_bf16": round(
                second["trainer_bf16"] / second["plain_bf16"], 3
            ),
        },
    }


def onednn_isa() -> str | None:
    """The instruction set oneDNN reports for a bf16 convolution on this CPU (its verbose
    log, read in a child process since oneDNN prints from C), e.g. `avx512_core_amx`."""
    code = (
        "import torch\n"
        "x = torch.randn(1, 16, 32, 32).to(memory_format=torch.channels_last)\n"
        "conv = torch.nn.Conv2d(16, 16, 3).to(memory_format=torch.channels_last)\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    conv(x)\n"
    )
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    ).stdout
    for line in out.splitlines():
        fields = line.split(",")
        if "exec" in fields and "convolution" in fields:
            return fields[fields.index("convolution") + 1]
    return None


def end_to_end(steps: int, repeats: int) -> dict:
    import tempfile

    from scaling import finish, shards  # benchmarks/scaling.py: the demo's photos, packed

    work = Path(tempfile.mkdtemp(prefix="gan-dist-e2e-"))
    data = shards(work, "one")
    variants = {
        "defaults": [],
        "fp32": ["train.mixed_precision=no"],
        "fp32_contiguous": ["train.mixed_precision=no", "train.channels_last=false"],
    }
    common = [
        f"data.train={data}",
        "data.val=null",
        f"train.max_steps={steps}",
        "train.log_every=10",
        "tracking.enabled=false",
    ]
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(repeats):
        for name, sets in variants.items():
            cmd = [sys.executable, "-m", "gan_dist", "train", "quickstart"]
            cmd += ["--run-dir", str(work / f"{name}-{i}")]
            cmd += [a for s in common + sets for a in ("--set", s)]
            started = time.perf_counter()
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "COLUMNS": "200"},
            )
            run = finish(proc, started, load_recipe("quickstart").data.batch_size)
            rates[name].append(run["steps_per_s"] * run["batch"])
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "steps": steps,
        "repeats": repeats,
        "images_per_s": {k: round(v, 2) for k, v in median.items()},
        "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "speedup_defaults_over_fp32_contiguous": round(
            median["defaults"] / median["fp32_contiguous"], 3
        ),
        "speedup_defaults_over_fp32": round(median["defaults"] / median["fp32"], 3),
    }


def cpu_model() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    from gan_dist.core.precision import cpu_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    parser.add_argument("--recipes", default="quickstart,medical")
    parser.add_argument("--e2e-steps", type=int, default=80, help="0: no end-to-end runs")
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs per variant")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {
        "benchmark": "train_step",
        "device": device,
        "cpu": cpu_model(),
        "cpu_bf16": cpu_bf16(),
        "onednn_bf16_conv_isa": onednn_isa() if device == "cpu" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "overhead": {},
    }
    for name in filter(None, args.recipes.split(",")):
        steps = args.steps if name == "quickstart" else max(8, args.steps // 3)
        report["overhead"][name] = overhead(name, args.size, steps)
    if args.e2e_steps:
        report["end_to_end_quickstart"] = end_to_end(args.e2e_steps, args.repeats)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
