"""The training loop: one code path for 1 process, N processes and N nodes (Accelerate).

Read `train` from the top: set-up, resume, then the loop, whose body is `train_step` just
below it. Every rank runs this file; only rank 0 prints and writes shared files.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from gan_dist.data.images import picture_grid
from gan_dist.data.pack import MANIFEST
from gan_dist.data.stream import StreamConfig, check_shards, make_stream
from gan_dist.errors import GanDistError
from gan_dist.nets import build_discriminator, build_generator
from gan_dist.objectives import (
    ADVERSARIAL,
    feature_matching,
    gradient_penalty,
    reconstruction,
    structural_dissimilarity,
)
from gan_dist.recipe import OptimizerConfig, Recipe, recipe_to_yaml
from gan_dist.track import Tracker
from gan_dist.train import checkpoint
from gan_dist.train import status as run_status
from gan_dist.train.ema import EMA
from gan_dist.train.evaluate import evaluate
from gan_dist.train.progress import Progress
from gan_dist.train.signals import EXIT_NONFINITE, StopFlag


class NonFiniteLoss(GanDistError):
    exit_code = EXIT_NONFINITE


@dataclass
class Outcome:
    status: str  # "completed" | "preempted"
    step: int
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    main_process: bool = True
    registered: str | None = None  # models:/NAME/VERSION when the run was registered


def train(recipe: Recipe, run_dir: Path, resume: str = "auto") -> Outcome:
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, set_seed

    cfg, data = recipe.train, recipe.data
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.cuda.is_available(),
        # a dead or hung rank fails the collective on the others after this long, not never
        kwargs_handlers=[
            InitProcessGroupKwargs(timeout=timedelta(seconds=recipe.launch.rank_timeout_s))
        ],
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    check_shards(data.train, data.channels, data.image_size, "data.train")
    if data.val:
        check_shards(data.val, data.channels, data.image_size, "data.val", split="val")
    ckpt = checkpoint.resolve(run_dir, resume)

    # nets: identical initial weights on every rank, then per-rank randomness
    set_seed(recipe.seed)
    G = build_generator(recipe.model, data.channels, data.image_size)
    D = build_discriminator(recipe.model.discriminator, data.channels, data.image_size)
    if cfg.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    ema = EMA(G, cfg.ema)
    opt_g, opt_d = _optimizer(G, recipe.optim.generator), _optimizer(D, recipe.optim.discriminator)
    sched_g, sched_d = _scheduler(opt_g, recipe), _scheduler(opt_d, recipe)
    saved = _load(ckpt, recipe, G, D, ema, opt_g, opt_d, sched_g, sched_d) if ckpt else {}
    step = ckpt.step if ckpt else 0
    ema.module.to(accelerator.device)
    if cfg.compile:
        G, D = torch.compile(G), torch.compile(D)
    G, D, opt_g, opt_d = accelerator.prepare(G, D, opt_g, opt_d)
    if saved.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(saved["scaler"])
    set_seed(recipe.seed + 1 + rank)
    rank_state = checkpoint.load_rank_state(ckpt, rank) if _same_shape(ckpt, world, data) else {}
    stream = make_stream(
        data.train,
        StreamConfig(
            data.batch_size,
            data.channels,
            train=True,
            workers=data.workers,
            shuffle_buffer=data.shuffle_buffer,
            augment=data.augment,
            seed=recipe.seed,
            skip={int(k): v for k, v in rank_state.get("data_position", {}).items()},
            # on a CPU the workers fill holes on another core while this one trains; a GPU
            # does it in the generator's forward in far less time than a worker could
            prefill=recipe.model.prefill if accelerator.device.type == "cpu" else "none",
        ),
    )
    batches = iter(stream)  # draws a DataLoader seed from torch's RNG: before restoring it
    if rank_state:
        checkpoint.restore_rng(rank_state)

    tracker = Tracker(
        recipe,
        run_dir,
        ckpt.state.get("tracking_run_id") if ckpt else None,
        enabled=accelerator.is_main_process,
        context={"world_size": world, "device": str(accelerator.device)},
    )
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        run_status.write(run_dir, "running", step)
        tracker.log_artifact(checkpoint.write_recipe(run_dir, recipe_to_yaml(recipe)))
        for split, shards in (("train", data.train), ("val", data.val)):
            if shards and (Path(shards) / MANIFEST).is_file():
                tracker.log_artifact(Path(shards) / MANIFEST, f"data/{split}")
    samples = _fixed_samples(recipe) if tracker.enabled else None
    progress = Progress(
        accelerator.is_main_process, step, cfg.max_steps, data.batch_size * world * cfg.grad_accum
    )
    if ckpt is not None:
        progress.message(f"resumed from {ckpt.path} at step {step}")

    def save_checkpoint() -> Path:
        return checkpoint.save(
            accelerator,
            run_dir,
            step,
            {
                "generator": accelerator.unwrap_model(G),
                "discriminator": accelerator.unwrap_model(D),
                "ema": ema.module,
            },
            {
                "generator": opt_g.state_dict(),
                "discriminator": opt_d.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None,
            },
            {
                "data_position": stream.position,
                "data_skipped": stream.skipped,
                "generator_sha256": checkpoint.digest(accelerator.unwrap_model(G)),
            },
            {
                "world_size": world,
                "workers": data.workers,
                "seed": recipe.seed,
                "schedulers": {
                    "generator": sched_g.state_dict(),
                    "discriminator": sched_d.state_dict(),
                },
                "recipe": recipe.model_dump(mode="json"),
                "tracking_run_id": tracker.wait_for_run_id(timeout=10),
                "metrics": metrics,
            },
            cfg.keep_checkpoints,
        )

    last_ckpt = ckpt.path if ckpt else None
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    logged: dict[str, float] = {}
    metrics: dict[str, float] = {}
    status = "completed"
    first_step = step + 1
    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
    with tracker, StopFlag() as stop:
        while step < cfg.max_steps:
            update_g = (step + 1) % recipe.objective.n_critic == 0
            for _ in range(cfg.grad_accum):
                losses = train_step(
                    next(batches), G, D, opt_g, opt_d, recipe, accelerator, update_g
                )
            if update_g:
                ema.update(accelerator.unwrap_model(G))
            sched_d.step()
            if update_g:
                sched_g.step()
            step += 1
            if step == first_step:  # start-up cost, visible in SLURM logs and benchmarks
                progress.message(
                    f"first step done {_since_start():.1f} s after start (step {step})"
                )
            for k, v in losses.items():  # summed on the device: no sync per loss
                sums[k] = sums[k] + v if k in sums else v
                counts[k] = counts.get(k, 0) + 1

            # one collective and one sync a step: a signal, a non-finite loss, or the time
            # budget spent, on any rank? (ranks must agree to stop at the same step)
            finite = torch.stack([torch.isfinite(v) for v in losses.values()]).all()
            local = [float(stop.requested), float(time.monotonic() > deadline)]
            flags = torch.cat(
                [torch.tensor(local, device=finite.device), (~finite).float().reshape(1)]
            )
            preempt, out_of_time, nonfinite = accelerator.reduce(flags, reduction="sum").tolist()
            if nonfinite:
                bad = [k for k, v in losses.items() if not math.isfinite(v.item())]
                where = f"rank {rank}: {', '.join(bad)}" if bad else "another rank"
                raise NonFiniteLoss(
                    f"non-finite loss at step {step} ({where}); stopped without saving, "
                    f"last good checkpoint: {last_ckpt or 'none'}. Lower the learning rate, "
                    "enable grad clipping (optim.grad_clip) or use bf16 instead of fp16."
                )

            last = step == cfg.max_steps or bool(out_of_time)
            if step % cfg.log_every == 0 or last:
                logged = _mean_over_ranks(sums, counts, accelerator)
                sums, counts = {}, {}
                tracker.log_metrics(
                    {f"train/{k}": v for k, v in logged.items()}
                    | _rates(progress.images_per_s(step), sched_g, sched_d),
                    step,
                )
            progress.update(step, logged if step % cfg.log_every == 0 or last else None)
            if data.val and (step % cfg.eval_every == 0 or last):
                metrics = _validate(ema.module, recipe, accelerator)
                tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step)
                progress.message(
                    f"step {step} validation: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                )
            if samples is not None and (step % cfg.sample_every == 0 or last or preempt):
                tracker.log_image(_sample_grid(ema.module, samples), "samples", step)
            if preempt:
                last_ckpt = save_checkpoint()
                if accelerator.is_main_process:
                    run_status.write(run_dir, "preempted", step, last_ckpt)
                progress.message(
                    f"preempted ({stop.signal or 'signal on another rank'}) at "
                    f"step {step}; checkpoint {last_ckpt}"
                )
                status = "preempted"
                tracker.status = "KILLED"  # ended for now; a resumed job reopens the run
                break
            if step % cfg.checkpoint_every == 0 or last:
                last_ckpt = save_checkpoint()
            if out_of_time:
                progress.message(f"time budget of {cfg.max_minutes} min spent at step {step}")
                break
    progress.close()
    if status == "completed" and accelerator.is_main_process:
        run_status.write(run_dir, status, step, last_ckpt)
    registered = None
    if status == "completed" and tracker.enabled and recipe.tracking.register_as and last_ckpt:
        registered = _register(last_ckpt, recipe.tracking.register_as, tracker.uri, progress)
    accelerator.end_training()
    return Outcome(
        status, step, last_ckpt, metrics, logged, accelerator.is_main_process, registered
    )


def train_step(
    batch: dict,
    G: nn.Module,
    D: nn.Module,
    opt_g,
    opt_d,
    recipe: Recipe,
    accelerator,
    update_g: bool,
) -> dict[str, torch.Tensor]:
    """One batch: a discriminator update, then (every n_critic steps) a generator update."""
    obj = recipe.objective
    adversarial = ADVERSARIAL[obj.adversarial]
    fmt = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    damaged, clean, mask, start = (
        batch[k].to(accelerator.device, non_blocking=True).contiguous(memory_format=fmt)
        if k in batch
        else None
        for k in ("damaged", "clean", "mask", "start")
    )
    losses: dict[str, torch.Tensor] = {}
    with accelerator.accumulate(G, D):
        # 1. the repair; kept in the graph only when the generator learns from it this step
        with torch.set_grad_enabled(update_g), accelerator.autocast():
            fake = G(damaged, mask, start)

        # 2. discriminator: real and repaired pairs in one forward (one DDP forward per
        #    backward, and batch-norm statistics over both), plus interpolates for WGAN-GP
        real_in = torch.cat([damaged, mask, clean], dim=1)
        fake_in = torch.cat([damaged, mask, fake.detach()], dim=1)
        parts = [real_in, fake_in]
        if obj.adversarial == "wgan-gp":
            eps = torch.rand(len(real_in), 1, 1, 1, device=real_in.device)
            interp = (eps * real_in + (1 - eps) * fake_in).requires_grad_(True)
            parts.append(interp)
        with accelerator.autocast():
            logits, feats = D(torch.cat(parts), features=True)
        chunks = logits.float().chunk(len(parts))
        real_logits, fake_logits = chunks[0], chunks[1]
        loss_d = adversarial.d(real_logits, fake_logits)
        losses["d_adv"] = loss_d.detach()
        if obj.adversarial == "wgan-gp":
            gp = gradient_penalty(chunks[2], interp)
            loss_d = loss_d + obj.gp_weight * gp
            losses["d_gp"] = gp.detach()
        accelerator.backward(loss_d)
        if recipe.optim.grad_clip and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(D.parameters(), recipe.optim.grad_clip)
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        losses["d_real"] = real_logits.detach().mean()
        losses["d_fake"] = fake_logits.detach().mean()

        # 3. generator: fool the (frozen) discriminator and stay close to the clean image
        if update_g:
            plain_d = accelerator.unwrap_model(D)
            plain_d.requires_grad_(False)
            with accelerator.autocast():
                g_logits, g_feats = plain_d(torch.cat([damaged, mask, fake], dim=1), features=True)
            g_adv = adversarial.g(g_logits.float())
            g_rec = reconstruction(fake, clean, mask, obj.l1_weight, obj.hole_l1_weight)
            loss_g = obj.adversarial_weight * g_adv + g_rec
            losses["g_adv"], losses["g_rec"] = g_adv.detach(), g_rec.detach()
            if obj.feature_matching_weight:
                real_feats = [f.chunk(len(parts))[0] for f in feats]
                g_fm = feature_matching(real_feats, g_feats)
                loss_g = loss_g + obj.feature_matching_weight * g_fm
                losses["g_fm"] = g_fm.detach()
            if obj.ssim_weight:
                g_ssim = structural_dissimilarity(fake, clean)
                loss_g = loss_g + obj.ssim_weight * g_ssim
                losses["g_ssim"] = g_ssim.detach()
            accelerator.backward(loss_g)
            plain_d.requires_grad_(True)
            if recipe.optim.grad_clip and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(G.parameters(), recipe.optim.grad_clip)
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
    losses["d_loss"] = loss_d.detach()
    return losses


def _optimizer(net: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(net.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up, then constant, linear decay to 0, or cosine to 0, over train.max_steps. Stepped
    once per optimiser step by the loop (not by Accelerate, which would step it once per
    process)."""
    sched, total = recipe.optim.schedule, recipe.train.max_steps

    def factor(step: int) -> float:
        if step < sched.warmup_steps:
            return (step + 1) / sched.warmup_steps
        frac = (step - sched.warmup_steps) / max(1, total - sched.warmup_steps)
        if sched.kind == "linear":
            return max(0.0, 1.0 - frac)
        if sched.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _load(ckpt, recipe: Recipe, G, D, ema, opt_g, opt_d, sched_g, sched_d) -> dict:
    """Weights, optimiser moments and schedules from a checkpoint; returns the saved
    optimiser file (it also holds the grad scaler, restored after `prepare`)."""
    checkpoint.load_nets(ckpt, {"generator": G, "discriminator": D, "ema": ema.module})
    saved = checkpoint.load_optimizers(ckpt)
    previous = ckpt.state["recipe"]["optim"]
    for name, opt, sched, cfg in (
        ("generator", opt_g, sched_g, recipe.optim.generator),
        ("discriminator", opt_d, sched_d, recipe.optim.discriminator),
    ):
        opt.load_state_dict(saved[name])
        sched.load_state_dict(ckpt.state["schedulers"][name])
        _apply_recipe(opt, sched, cfg, previous[name], name)
    return saved


def _apply_recipe(opt, sched, cfg: OptimizerConfig, saved: dict, name: str) -> None:
    """A resumed optimiser keeps its moments but takes lr, betas and weight decay from the
    recipe: lowering the lr after a blow-up and resuming must work. Unchanged values give
    the same floats, so exact resume is kept."""
    current = cfg.model_dump(mode="json")
    changed = [k for k in ("lr", "betas", "weight_decay") if saved.get(k) != current[k]]
    if changed:
        import logging

        logging.getLogger("gan_dist.train").warning(
            "optim.%s: %s changed since the checkpoint; using the recipe's values",
            name,
            ", ".join(changed),
        )
    sched.base_lrs = [cfg.lr for _ in opt.param_groups]
    for group, factor in zip(opt.param_groups, sched.lr_lambdas, strict=True):
        group.update(
            lr=cfg.lr * factor(sched.last_epoch), betas=cfg.betas, weight_decay=cfg.weight_decay
        )
    sched._last_lr = [group["lr"] for group in opt.param_groups]


def _same_shape(ckpt: checkpoint.Checkpoint | None, world: int, data) -> bool:
    """Random state and data position resume exactly only for the same number of processes
    and data workers; otherwise weights and optimisers resume and the data order restarts."""
    if ckpt is None:
        return False
    saved = (ckpt.state["world_size"], ckpt.state["workers"])
    if saved != (world, data.workers):
        import logging

        logging.getLogger("gan_dist.train").warning(
            "checkpoint was written by %d process(es) with %d data worker(s), this run has "
            "%d and %d: weights and optimisers resume, data order and random state restart",
            *saved,
            world,
            data.workers,
        )
        return False
    return True


def _mean_over_ranks(
    sums: dict[str, torch.Tensor], counts: dict[str, int], accelerator
) -> dict[str, float]:
    keys = sorted(sums)
    t = torch.stack([sums[k].double() / counts[k] for k in keys])
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist(), strict=True))


def _validate(generator: nn.Module, recipe: Recipe, accelerator) -> dict[str, float]:
    data = recipe.data
    stream = make_stream(
        data.val, StreamConfig(data.batch_size, data.channels, train=False, workers=0), split="val"
    )
    generator.eval()
    return evaluate(
        generator,
        stream,
        accelerator.device,
        lambda t: accelerator.reduce(t, reduction="sum"),
        accelerator.autocast,
        recipe.train.eval_batches,
    )


def _register(ckpt: Path, name: str, uri: str, progress: Progress) -> str | None:
    """The finished run's EMA generator becomes a model version. Training is done and its
    checkpoint safe, so a registry failure is a warning with the command to retry."""
    from gan_dist.models import register

    try:
        reg = register(ckpt, name, uri)
    except Exception as exc:  # the store's failure must not turn a finished run into an error
        import logging

        logging.getLogger("gan_dist.train").warning(
            "could not register %s as %s (%s); retry with: gan-dist models register %s --name %s",
            ckpt,
            name,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            ckpt,
            name,
        )
        return None
    progress.message(f"registered {reg.uri} (model {name}, version {reg.version})")
    return reg.uri


def _since_start() -> float:
    """Seconds since this process started (launcher and imports included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


def _rates(images_per_s: float, sched_g, sched_d) -> dict[str, float]:
    out = {
        "images_per_s": images_per_s,
        "lr/generator": sched_g.get_last_lr()[0],
        "lr/discriminator": sched_d.get_last_lr()[0],
    }
    if torch.cuda.is_available():
        out["gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _fixed_samples(recipe: Recipe) -> dict[str, torch.Tensor] | None:
    """The same held-out samples every time, so the grids over steps show one repair
    improving. Validation samples when there are any, else the first training samples."""
    data = recipe.data
    split = "val" if data.val else "train"
    stream = make_stream(
        data.val or data.train,
        StreamConfig(recipe.tracking.sample_count, data.channels, train=False, workers=0),
        split=split,
    )
    with torch.random.fork_rng(devices=[]):  # a DataLoader draws its seed: keep resume exact
        return next(iter(stream), None)


@torch.no_grad()
def _sample_grid(generator: nn.Module, batch: dict[str, torch.Tensor]):
    """damaged | repaired | clean, one sample a row, 8-bit (what the MLflow UI shows)."""
    device = next(generator.parameters()).device
    generator.eval()
    repaired = generator(batch["damaged"].to(device), batch["mask"].to(device)).float().cpu()

    def picture(t: torch.Tensor):
        return (((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0)).numpy()

    return picture_grid(
        [
            [picture(d), picture(r), picture(c)]
            for d, r, c in zip(batch["damaged"], repaired, batch["clean"], strict=True)
        ]
    )
