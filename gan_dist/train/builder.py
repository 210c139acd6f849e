"""What a recipe makes before the first step (torchtitan's one-job components): the nets,
their optimisers and learning-rate schedules, and the configuration of every stream a run
reads (training, validation, the repair grid's samples), each built in one place."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from gan_dist.core.precision import effective_precision
from gan_dist.data.stream import StreamConfig
from gan_dist.nets.build import build_discriminator, build_generator

if TYPE_CHECKING:
    from accelerate import Accelerator

    from gan_dist.config.recipe import OptimizerConfig, Recipe

GRID_POOL = 8  # the grid's samples are spread over this many times as many held-out ones


def accelerator_for(recipe: Recipe) -> tuple[Accelerator, str]:
    """The Accelerate state a run trains under, and a note ("" for none) where the device
    cannot take the recipe's `train.mixed_precision`: gradient accumulation
    (`train.grad_accum`: DDP all-reduces on the last micro-batch only), DDP's gradient
    buckets (`launch.bucket_mb`, MB) and their all-reduce in bf16
    (`launch.grad_compression`: half the bytes, PyTorch's `bf16_compress_hook`), and the
    collective timeout (`launch.rank_timeout_s`, s: a dead or hung rank fails the
    collective on the others after this long). The bucket and compression settings are
    what the scaling model in benchmarks/multinode.py weighs."""
    from accelerate import Accelerator
    from accelerate.utils import (
        DDPCommunicationHookType,
        DistributedDataParallelKwargs,
        InitProcessGroupKwargs,
    )

    cuda = torch.cuda.is_available()
    launch = recipe.launch
    precision, note = effective_precision(recipe.train.mixed_precision, "cuda" if cuda else "cpu")
    hook = {"none": DDPCommunicationHookType.NO, "bf16": DDPCommunicationHookType.BF16}
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=recipe.train.grad_accum,
        cpu=not cuda,
        kwargs_handlers=[
            InitProcessGroupKwargs(timeout=timedelta(seconds=launch.rank_timeout_s)),
            DistributedDataParallelKwargs(
                bucket_cap_mb=launch.bucket_mb, comm_hook=hook[launch.grad_compression]
            ),
        ],
    )
    return accelerator, note


def build_nets(recipe: Recipe) -> tuple[nn.Module, nn.Module]:
    """The recipe's generator (wrapped in RepairNet) and discriminator, channels-last when
    `train.channels_last`. Their memory is checked for what training holds: weights,
    gradients and two Adam moments, and the generator's EMA (see `nets.build`)."""
    data = recipe.data
    G = build_generator(recipe.model, data.channels, data.image_size, copies=5)
    D = build_discriminator(recipe.model.discriminator, data.channels, data.image_size, copies=4)
    if recipe.train.channels_last:
        G = G.to(memory_format=torch.channels_last)
        D = D.to(memory_format=torch.channels_last)
    return G, D


def optimizer(net: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over the net's parameters, as `optim.generator` or
    `optim.discriminator` sets it."""
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(net.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def scheduler(opt: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up, then constant, linear decay to 0, or cosine to 0, over train.max_steps. Stepped
    once per optimiser step by the loop (not by Accelerate, which would step it once per
    process)."""
    sched, total = recipe.optim.schedule, recipe.train.max_steps

    def factor(step: int) -> float:
        if step < sched.warmup_steps:
            return (step + 1) / sched.warmup_steps
        if total is None:  # a time budget only: the recipe allows a constant schedule alone
            return 1.0
        frac = (step - sched.warmup_steps) / max(1, total - sched.warmup_steps)
        if sched.kind == "linear":
            return max(0.0, 1.0 - frac)
        if sched.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def stream_config(
    recipe: Recipe,
    purpose: Literal["train", "val", "grid"],
    *,
    rank: int | None = None,
    world: int | None = None,
    skip: dict[int, int] | None = None,
    prefill: str = "none",
) -> StreamConfig:
    """How a run reads its shards. `train`: batches of `data.batch_size` for this rank of
    `world`, shuffled, augmented, freshly damaged where the recipe says so, from the stream
    position `skip` (a resume's), with the stored or computed `prefill`. `val`: the
    validation split in order, each rank its share. `grid`: GRID_POOL times
    `tracking.sample_count` samples in order, for the repair grid. `rank` and `world` None:
    from torch.distributed (see StreamConfig)."""
    data = recipe.data
    if purpose == "train":
        return StreamConfig(
            data.batch_size,
            data.channels,
            train=True,
            workers=data.workers,
            shuffle_buffer=data.shuffle_buffer,
            augment=data.augment,
            fresh_damage=data.damage if data.fresh_damage else None,
            seed=recipe.seed,
            skip=skip,
            prefill=prefill,
            rank=rank,
            world=world,
            stall_timeout_s=data.stall_timeout_s,
            allow_shell=data.allow_shell,
        )
    batch = GRID_POOL * recipe.tracking.sample_count if purpose == "grid" else data.batch_size
    return StreamConfig(
        batch,
        data.channels,
        train=False,
        workers=0,
        rank=rank,
        world=world,
        allow_shell=data.allow_shell,
    )
