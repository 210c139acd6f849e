"""The training loop: one code path for 1 process, N processes and N nodes (Accelerate).

Read `train` from the top: set-up (`_Run.start`, with the nets, optimisers and streams from
`builder.py`), resume, then the loop (`_Run.loop`), whose body is `step.train_step`. Every
rank runs this file; only rank 0 prints and writes shared files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from gan_dist.config.families import registry
from gan_dist.config.family import PluginError
from gan_dist.config.recipe import OptimizerConfig, Recipe, recipe_to_yaml
from gan_dist.core.errors import GanDistError
from gan_dist.core.pixels import to_uint8
from gan_dist.core.prefill import prefill_parts
from gan_dist.data.identity import data_identity
from gan_dist.data.images import picture_grid
from gan_dist.data.pack import MANIFEST
from gan_dist.data.stream import StreamConfig, check_data, make_stream, pack_of
from gan_dist.metrics.evaluate import evaluate
from gan_dist.metrics.perceptual import PerceptualMetrics, PerceptualWeights
from gan_dist.nets.repair_net import prefill_only
from gan_dist.run import checkpoint
from gan_dist.run import status as run_status
from gan_dist.run.heartbeat import Beat, Heartbeat, beat_interval, gave_up, who_went_silent
from gan_dist.run.runlock import RunDirBusy, RunLock
from gan_dist.run.signals import (
    EXIT_NONFINITE,
    EXIT_PREEMPTED,
    EXIT_TRACKING,
    StopFlag,
    StopRequested,
)
from gan_dist.tracking.tracker import Tracker
from gan_dist.train.builder import (
    accelerator_for,
    build_nets,
    optimizer,
    scheduler,
    stream_config,
)
from gan_dist.train.ema import EMA
from gan_dist.train.profile import PROFILE_DIR, DataWait, StepProfiler
from gan_dist.train.progress import Progress
from gan_dist.train.resume import Change, ChangedRun, as_ran, check_resume
from gan_dist.train.step import Nets, train_step

GRID_KEY = "grid/repair"  # damaged | repaired | original held-out samples; its section sorts first
GRID_FILE = "repair_grid.png"  # the newest one, in the run dir and as the run's artifact

if TYPE_CHECKING:  # given by the caller: train/ never loads models from the registry
    from gan_dist.train.finetune import InitialWeights

log = logging.getLogger("gan_dist.train")

# A stop signal that arrives while the loop waits for data gives the batch this long to come
# (then the step ends normally and checkpoints); a stalled stream is interrupted after it.
DATA_WAIT_GRACE_S = 10.0


class NonFiniteLoss(GanDistError):
    exit_code = EXIT_NONFINITE


def stream_prefill(kind: str, device: str) -> str:
    """The prefill training batches carry (`StreamConfig.prefill`): on a CPU every kind,
    packed or solved by the data workers on another core while this one trains; on a GPU
    only an exemplar fill, which runs on a CPU (a smooth one takes the generator's forward
    far less time there than a worker could)."""
    return kind if device == "cpu" or "patchmatch" in prefill_parts(kind) else "none"


def _plugins_named(recipe: Recipe) -> str:
    """`; or check the plugin families ...` when a net or the objective is a plugin's,
    whose own code may be what made the loss non-finite; "" otherwise."""
    names = {
        "generator": recipe.model.generator.name,
        "discriminator": recipe.model.discriminator.name,
        "objective": recipe.objective.adversarial,
    }
    plugins = [f for f in (registry(k).get(n) for k, n in names.items()) if f.plugin]
    if not plugins:
        return ""
    return f"; or check the plugin code it ran: {', '.join(f.label for f in plugins)}"


class LostContact(GanDistError):
    """A collective got no answer from another rank within `launch.rank_timeout_s`: its host
    died, or the link to it is down. Exits as a preemption: a requeued job resumes."""

    exit_code = EXIT_PREEMPTED


def _collective_failure(exc: BaseException, world: int) -> str | None:
    """How a collective failed, as torch reports it (a DistError, or gloo's plain
    RuntimeError): "timeout" when it gave up waiting for another rank ("Timed out waiting
    30000ms for recv operation", "Application timeout caused pair closure"), "closed" when a
    peer's connection closed ("Connection closed by peer": the peer's process ended, a crash
    or a rank that gave up itself); None for anything else."""
    if world < 2 or not isinstance(exc, RuntimeError):
        return None
    text = str(exc).lower()
    from_c10d = isinstance(exc, torch.distributed.DistError) or any(
        word in text for word in ("gloo", "nccl", "pair closure")
    )
    if not from_c10d:
        return None
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if "connection closed" in text or "connection reset" in text or "broken pipe" in text:
        return "closed"
    return None


class TrackingFailed(GanDistError):
    """The MLflow run could not be started and `tracking.required` is true."""

    exit_code = EXIT_TRACKING


def _lock_run_dir(run_dir: Path, accelerator, requeue_wait_s: float) -> RunLock | None:
    """Rank 0 takes the run dir's lock; every rank learns (one collective) whether it did,
    and all fail together if not. A requeued SLURM job waits for the old job to drain."""
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    lock, busy = None, None
    if accelerator.is_main_process:
        lock = RunLock(run_dir)
        try:
            lock.acquire(requeue_wait_s if requeued else 0.0)
        except RunDirBusy as exc:
            lock, busy = None, exc
    flag = torch.tensor([0.0 if busy is None else 1.0], device=accelerator.device)
    if accelerator.reduce(flag, reduction="sum").item():
        raise busy or RunDirBusy(f"{run_dir} is in use by another trainer (see rank 0)")
    return lock


def _no_region(name: str) -> contextlib.nullcontext:
    return contextlib.nullcontext()


def _caller(exc: BaseException) -> str:
    """Where an exception was raised: the innermost frame's file and line."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "code"


def _kind(exc: BaseException) -> str:
    """`Kind: first line of its message`, or the kind alone."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _say(text: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(text, flush=True)


@dataclass
class Outcome:
    status: str  # "completed" | "preempted"
    step: int
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    main_process: bool = True
    already_complete: bool = False  # resumed at train.max_steps or past it: nothing trained
    run_id: str | None = None  # the MLflow run, and its experiment, once it started
    experiment_id: str | None = None
    grid: Path | None = None  # the newest repair grid, RUN_DIR/repair_grid.png


def train(
    recipe: Recipe,
    run_dir: Path,
    resume: str = "auto",
    stop: StopFlag | None = None,
    initial: Callable[[], InitialWeights] | None = None,
    resume_changed: bool = False,
) -> Outcome:
    """Train `recipe` on this rank, checkpointing into `run_dir`; every rank calls it.
    `initial` gives the weights to start from when there is no checkpoint to resume
    (`model.init`, resolved by the caller: see `models.initial_weights`). A resume whose
    recipe changes what the run is (see `train.resume.HOW_IT_RUNS`) is refused unless
    `resume_changed`; the changes a resume makes are recorded.

    Returns the outcome (completed or preempted: a stop signal, see `signals`). Raises
    GanDistError for what the user must fix (RunDirBusy, ChangedRun, DataStalled,
    NonFiniteLoss, CheckpointWriteError, TrackingFailed, PluginError for a plugin family
    that broke its contract or called sys.exit), and for any other BaseException but
    KeyboardInterrupt (re-raised as it is); LostContact (exit 75) when another rank stopped
    answering for `launch.rank_timeout_s`, recorded as `preempted` so that a requeue
    resumes. Whatever else ends it but a stop signal, rank 0 records `failed` in
    status.json, except for a refused resume, which leaves the run as it was."""
    with contextlib.ExitStack() as stack:
        if stop is None:
            stop = stack.enter_context(StopFlag())
        run = _Run(recipe, run_dir)
        stack.callback(run.close)
        try:
            with stop.interruptible(grace_s=0):  # start-up: a stop ends it at once
                run.start(resume, initial, resume_changed)
            return run.loop(stop)
        except StopRequested as exc:
            return run.stopped(str(exc))
        except Exception as exc:
            if run.lost_contact(exc):
                raise run.lost() from None
            run.failed(exc)
            raise
        except SystemExit as exc:  # code in a net or loss (a plugin's) must not end a run as done
            error = PluginError(
                f"{_caller(exc)} called sys.exit({exc.code!r}) during training at step "
                f"{run.step}; nothing after the last checkpoint ({run.last_ckpt or 'none'}) "
                "was saved"
            )
            run.failed(error)
            raise error from None
        except KeyboardInterrupt as exc:  # the StopFlag holds Ctrl-C: code raised this one
            run.failed(exc, f"interrupted: KeyboardInterrupt raised at {_caller(exc)}")
            raise
        except BaseException as exc:  # not an Exception, so nothing on the way handled it
            error = GanDistError(
                f"{_caller(exc)} raised {_kind(exc)} during training at step {run.step}; "
                f"nothing after the last checkpoint ({run.last_ckpt or 'none'}) was saved"
            )
            run.failed(exc, str(error))
            raise error from None


class _Run:
    """One rank's run: start-up (`start`), the loop (`loop`), and its endings."""

    def __init__(self, recipe: Recipe, run_dir: Path) -> None:
        self.recipe, self.run_dir = recipe, run_dir
        self.accelerator = None
        self.lock: RunLock | None = None  # rank 0 only, once it holds the run dir
        self.stream = None
        self.tracker: Tracker | None = None
        self.step = 0
        self.last_ckpt: Path | None = None
        self.metrics: dict[str, float] = {}
        # the prefill alone on the validation data, scored once per run (val/prefill/*)
        self.prefill_metrics: dict[str, float] | None = None
        self.profiler: StepProfiler | None = None
        self.heartbeat: Heartbeat | None = None  # with several ranks: who went silent
        self.gave_up: list[Beat] = []  # ranks that gave up on a lost host and closed on us
        self.perceptual: PerceptualMetrics | None = None
        self.lineage: dict[str, str] = {}  # model.init's source and parent, as tags
        self.grid: Path | None = None  # the newest repair grid written, RUN_DIR/GRID_FILE
        # the resumes that changed the recipe: {"step", "changes": {path: [old, new(, why)]}}
        self.resumes: list[dict] = []
        # what data.train and data.val name (see `data.identity`), as checkpoints record it
        self.data_identity: dict[str, dict | None] = {}
        self.already_complete = False
        # what the run's record (recipe.yaml, MLflow params) shows: the recipe, except for a
        # run already complete, which shows the recipe it ran with (see `as_ran`)
        self.shown = recipe
        # the loop's running state: loss sums since the last log, and what was logged
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.logged: dict[str, float] = {}
        self.waits: DataWait  # started with the loop, so start-up is not counted as waiting

    @property
    def main(self) -> bool:
        if self.accelerator is not None:
            return self.accelerator.is_main_process
        return os.environ.get("RANK", "0") == "0"

    def start(
        self, resume: str, initial: Callable[[], InitialWeights] | None, resume_changed: bool
    ) -> None:
        from accelerate.utils import set_seed

        recipe, run_dir = self.recipe, self.run_dir
        asked, cfg, data = recipe, recipe.train, recipe.data  # as given, before a resume
        accelerator, precision_note = accelerator_for(asked)
        self.accelerator = accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        # the data first: a wrong path must not leave a run folder behind
        self.val = check_data(data, world * max(1, data.workers))
        # what the data is, recorded in checkpoints and compared on resume: every rank reads
        # the same files, so every rank comes to the same decision without a collective
        self.data_identity = {
            "train": data_identity(data.train, "train", data.allow_shell),
            "val": data_identity(self.val, "val", data.allow_shell),
        }
        launch = recipe.launch
        wait = launch.rank_timeout_s / 2 if launch.lock_wait_s is None else launch.lock_wait_s
        self.lock = _lock_run_dir(run_dir, accelerator, wait)
        ckpt = checkpoint.resolve(run_dir, resume)
        self.last_ckpt, self.step = (ckpt.path, ckpt.step) if ckpt else (None, 0)
        recipe, changes = self._resume_from(ckpt, resume_changed) if ckpt else (recipe, [])
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)

        # nets: identical initial weights on every rank, then per-rank randomness
        set_seed(recipe.seed)
        # the memory held: weights, gradients, two Adam moments (and the generator's EMA)
        G, D = build_nets(recipe)
        self.ema = EMA(G, cfg.ema)
        opt_g = optimizer(G, recipe.optim.generator)
        opt_d = optimizer(D, recipe.optim.discriminator)
        self.sched_g, self.sched_d = scheduler(opt_g, recipe), scheduler(opt_d, recipe)
        saved = (
            _load(ckpt, recipe, G, D, self.ema, opt_g, opt_d, self.sched_g, self.sched_d)
            if ckpt
            else {}
        )
        started_from = None
        if ckpt is not None:
            self.lineage = ckpt.state.get("lineage", {})
        elif initial is not None:
            started_from = _initialise(initial(), recipe, G, D, self.ema)
            self.lineage = started_from[0].tags
        self.ema.module.to(accelerator.device)
        if cfg.compile:
            G, D = torch.compile(G), torch.compile(D)
        self.G, self.D, self.opt_g, self.opt_d = accelerator.prepare(G, D, opt_g, opt_d)
        if saved.get("scaler") and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(saved["scaler"])
        set_seed(recipe.seed + 1 + rank)
        same = _same_shape(ckpt, world, data)
        rank_state = checkpoint.load_rank_state(ckpt, rank) if same else {}
        self.stream = make_stream(
            data.train,
            stream_config(
                recipe,
                "train",
                rank=rank,
                world=world,
                skip={int(k): v for k, v in rank_state.get("data_position", {}).items()},
                prefill=stream_prefill(recipe.model.prefill, accelerator.device.type),
            ),
        )
        weights = recipe.train.metric_weights
        if self.val and (weights.inception or weights.lpips):  # a bad file fails the start
            self.perceptual = PerceptualMetrics(
                PerceptualWeights(
                    Path(weights.inception) if weights.inception else None,
                    Path(weights.lpips) if weights.lpips else None,
                    weights.lpips_net,
                ),
                accelerator.device,
            )
        self.batches = iter(self.stream)  # draws a DataLoader seed: before restoring RNG
        if rank_state:
            checkpoint.restore_rng(rank_state)
        self.progress = Progress(
            self.main, self.step, cfg.max_steps, data.batch_size * world * cfg.grad_accum
        )
        self._announce(asked, ckpt, changes, precision_note, started_from)
        self.tracker = Tracker(
            self.shown,
            run_dir,
            ckpt.state.get("tracking_run_id") if ckpt else None,
            enabled=self.main,
            context={"world_size": world, "device": str(accelerator.device)},
            tags={f"gan_dist.{k}": v for k, v in self.lineage.items()},
            resume_tags=_resume_tags(self.resumes[-1], len(self.resumes)) if changes else None,
        )

    def _announce(
        self, asked: Recipe, ckpt: checkpoint.Checkpoint | None, changes: list[Change],
        precision_note: str, started_from: tuple[InitialWeights, str] | None,
    ) -> None:  # fmt: skip
        """What the start decided that a user should read before the first step: where the
        validation data comes from, the prefill and precision used, the resume and what it
        changed, a run already complete, the weights it starts from. `asked`: the recipe as
        given, before a resume merged it with the checkpoint's."""
        cfg, data = asked.train, asked.data
        self.progress.message(_validation_note(data.train, data.val, self.val))
        unpacked = _unpacked_prefill(data.train, self.recipe.model.prefill, self.stream.config)
        if unpacked:
            self.progress.message(unpacked)
        if precision_note:
            self.progress.message(precision_note)
        if ckpt is not None:
            self.progress.message(f"resumed from {ckpt.path} at step {self.step}")
            if "data_identity" not in ckpt.state:
                self.progress.message(
                    f"{ckpt.path} predates gan-dist's record of its data's identity: data.train "
                    "and data.val were compared by their text (the next checkpoint records it)"
                )
        if changes:
            where = "the checkpoint and recipe.yaml" + (
                f", and the MLflow tags resume.{len(self.resumes)}.*"
                if self.recipe.tracking.enabled
                else ""
            )
            self.progress.message(
                f"changed on resume (recorded in {where}): " + ", ".join(str(c) for c in changes)
            )
        if self.already_complete:
            self.progress.message(
                f"already complete at step {self.step} (train.max_steps {cfg.max_steps}); "
                "nothing to train (raise train.max_steps to train on, or start a fresh run "
                "with --run-dir NEW)"
            )
        if started_from is not None:
            self.progress.message(started_from[1])

    def _resume_from(
        self, ckpt: checkpoint.Checkpoint, resume_changed: bool
    ) -> tuple[Recipe, list[Change]]:
        """The recipe a resume from `ckpt` trains on and what it changes (`resume.py`), with
        the run's record of its resumes and the prefill's saved scores. Every rank decides
        alike: the same files, the same recipe."""
        recipe, cfg = self.recipe, self.recipe.train
        recipe, changes = check_resume(
            ckpt.state["recipe"],
            recipe,
            ckpt.path,
            ckpt.step,
            resume_changed,
            lineage=ckpt.state.get("lineage"),
            data_was=ckpt.state.get("data_identity"),
            data_is=self.data_identity,
        )
        self.recipe = self.shown = recipe
        self.resumes = list(ckpt.state.get("resumes", []))
        # kept only when they score this run's prefill on this run's validation data
        kept = ckpt.state.get("prefill_metrics") or {}
        scored = (kept.get("kind"), kept.get("val"))
        if scored == (recipe.model.prefill, self.data_identity.get("val")):
            self.prefill_metrics = kept.get("metrics")
        self.already_complete = cfg.max_steps is not None and ckpt.step >= cfg.max_steps
        if self.already_complete:  # nothing trains: nothing changes but the tracking
            self.shown, changes = as_ran(ckpt.state["recipe"], recipe), []
        if changes:
            record = {"step": ckpt.step, "changes": {c.path: c.values for c in changes}}
            self.resumes.append(record)
        return recipe, changes

    def save_checkpoint(self, position: dict[int, int] | None = None) -> Path:
        """A checkpoint at the current step; `position`: the data stream's position to
        record, when the last batches drawn were not trained on."""
        accelerator, stream = self.accelerator, self.stream
        G, D = checkpoint.plain(self.G), checkpoint.plain(self.D)  # no `_orig_mod.` names
        self.last_ckpt = checkpoint.save(
            accelerator,
            self.run_dir,
            step=self.step,
            nets={"generator": G, "discriminator": D, "ema": self.ema.module},
            optimizers={
                "generator": self.opt_g.state_dict(),
                "discriminator": self.opt_d.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None,
            },
            rank_state={
                "data_position": stream.position if position is None else position,
                "data_skipped": stream.skipped,
                "generator_sha256": checkpoint.digest(G),
                "host": socket.gethostname(),  # where the rank ran: node trouble is per host
            },
            state={
                "world_size": accelerator.num_processes,
                "workers": self.recipe.data.workers,
                "seed": self.recipe.seed,
                "schedulers": {
                    "generator": self.sched_g.state_dict(),
                    "discriminator": self.sched_d.state_dict(),
                },
                "recipe": self.recipe.model_dump(mode="json"),
                "tracking_run_id": self.tracker.wait_for_run_id(timeout=10),
                "metrics": self.metrics,
                "lineage": self.lineage,
                "data_identity": self.data_identity,
                "resumes": self.resumes,
                "prefill_metrics": {
                    "kind": self.recipe.model.prefill,
                    "val": self.data_identity.get("val"),
                    "metrics": self.prefill_metrics,
                }
                if self.prefill_metrics
                else None,
            },
            keep=self.recipe.train.keep_checkpoints,
        )
        return self.last_ckpt

    def loop(self, stop: StopFlag) -> Outcome:
        """The training loop: a step (`train_step`), then what is due at that step."""
        recipe, accelerator, tracker, progress = (
            self.recipe, self.accelerator, self.tracker, self.progress,
        )  # fmt: skip
        cfg, objective = recipe.train, recipe.objective
        first_step = self.step + 1
        deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
        progress.deadline = deadline  # its time left is the sooner of steps and budget
        with tracker:
            try:
                samples = self._begin(stop, first_step)
            except StopRequested as exc:
                return self.stopped(str(exc))
            region = self.profiler.region if self.profiler else _no_region
            step_on = partial(
                train_step,
                nets=Nets(self.G, self.D, self.opt_g, self.opt_d),
                objective=objective,
                accelerator=accelerator,
                grad_clip=recipe.optim.grad_clip,
                channels_last=cfg.channels_last,
            )
            self.waits = DataWait()
            if accelerator.num_processes > 1:
                rank = accelerator.process_index
                every = beat_interval(recipe.launch.rank_timeout_s)
                self.heartbeat = Heartbeat(self.run_dir, rank, lambda: self.step, every).start()
            while self.step < (cfg.max_steps or math.inf):
                update_g = (self.step + 1) % objective.n_critic == 0
                r1_due = self.step % objective.r1_every == 0
                position = self.stream.position
                try:  # a stalled stream must not hold a stop signal up for long
                    with (
                        self.waits.timed(),
                        region("data_wait"),
                        stop.interruptible(grace_s=DATA_WAIT_GRACE_S),
                    ):
                        batches = [next(self.batches) for _ in range(cfg.grad_accum)]
                except StopRequested as exc:
                    return self.stopped(str(exc), position)
                with region("train_step"):  # every micro-batch's losses count, not the last
                    losses = [step_on(b, update_g=update_g, r1_due=r1_due) for b in batches]
                if update_g:
                    self.ema.update(accelerator.unwrap_model(self.G))
                    self.sched_g.step()
                self.sched_d.step()
                self.step = step = self.step + 1
                if step == first_step:  # start-up cost, visible in SLURM logs and benchmarks
                    progress.message(
                        f"first step done {_since_start():.1f} s after start (step {step})"
                    )
                preempt, out_of_time = self._agree(losses, stop, deadline)
                last = step == cfg.max_steps or out_of_time
                self._log_losses(losses, step % cfg.log_every == 0 or last)
                if self.val and (step % cfg.eval_every == 0 or last):
                    try:  # cut short by a stop; a read that blocks is interrupted
                        self._validate_now(stop)
                    except StopRequested as exc:  # the step is done: one process saves it
                        return self.stopped(str(exc), self.stream.position)
                if samples is not None and (step % cfg.sample_every == 0 or last or preempt):
                    self._log_grid(samples)
                if preempt:
                    self.save_checkpoint()
                    return self.stopped(stop.signal or "a signal on another rank")
                if step % cfg.checkpoint_every == 0 or last:
                    self.save_checkpoint()
                    self._write_status("running")
                if out_of_time:
                    progress.message(f"time budget of {cfg.max_minutes} min spent at step {step}")
                    break
                if self.profiler is not None:
                    self._profiled()
            progress.close()
            self._write_status("completed")
        if tracker.start_failed is not None:  # known for certain only once it has closed
            self._untracked(tracker.start_failed)
        return Outcome(
            "completed",
            self.step,
            self.last_ckpt,
            self.metrics,
            self.logged,
            self.main,
            self.already_complete,
            tracker.run_id if tracker.enabled else None,
            tracker.experiment_id,
            self.grid,
        )

    def _begin(self, stop: StopFlag, first_step: int):
        """Before the first step: the status, the recipe and manifests as artifacts, the
        profiler, and the fixed held-out samples of the repair grid (None when untracked).
        Raises StopRequested: reading the samples may block, and must not hold a stop up."""
        recipe, tracker, cfg = self.recipe, self.tracker, self.recipe.train
        self._write_status("running")
        text = _resume_notes(self.resumes) + recipe_to_yaml(self.shown)
        tracker.log_artifact(checkpoint.write_recipe(self.run_dir, text))
        for split, shards in (("train", recipe.data.train), ("val", self.val)):
            if shards and (Path(shards) / MANIFEST).is_file():
                tracker.log_artifact(Path(shards) / MANIFEST, f"data/{split}")
        with stop.interruptible(grace_s=0):
            samples = _fixed_samples(recipe, self.val) if tracker.enabled else None
        if samples is not None and self.step == 0:  # before training: the prefill's repair
            self._log_grid(samples)
        if cfg.profile_steps:  # as many as this run has left after the skipped ones
            total = cfg.max_steps or math.inf
            left = total - first_step + 1 - StepProfiler.WAIT - StepProfiler.WARMUP
            if left > 0:
                steps = min(cfg.profile_steps, left)
                rank = self.accelerator.process_index
                self.profiler = StepProfiler(self.run_dir, steps, rank, first_step)
                if steps < cfg.profile_steps:
                    self.progress.message(
                        f"train.profile_steps: this run has {steps} step(s) left to "
                        f"profile, not {cfg.profile_steps}"
                    )
            else:
                self.progress.message(
                    "train.profile_steps: no steps left to profile in this run (its first "
                    f"{StepProfiler.WAIT + StepProfiler.WARMUP} are not recorded)"
                )
        return samples

    def _log_grid(self, samples: dict[str, torch.Tensor]) -> None:
        """The repair grid of the EMA generator at this step: in MLflow (the image panel's
        history, and the newest on the run's Overview page) and in RUN_DIR/repair_grid.png."""
        from gan_dist.data.images import write_png_atomic

        grid = _sample_grid(self.ema.module, samples)
        shown = "held-out samples" if self.val else "training samples (no validation split)"
        about = f"{shown}, damaged | repaired | original"
        self.tracker.log_image(grid, GRID_KEY, self.step, newest=GRID_FILE, about=about)
        try:
            write_png_atomic(self.run_dir / GRID_FILE, grid)
            self.grid = self.run_dir / GRID_FILE
        except OSError as exc:  # a full disk loses the picture, never the run
            log.warning("could not write %s: %s", self.run_dir / GRID_FILE, exc)

    def _agree(
        self, losses: list[dict[str, torch.Tensor]], stop: StopFlag, deadline: float
    ) -> tuple[bool, bool]:
        """One collective and one sync a step: a signal, a non-finite loss, the time budget
        spent, or a tracking run that could not start, on any rank? Ranks must agree to
        stop at the same step. Returns (preempt, out of time); raises NonFiniteLoss, or
        TrackingFailed (`_untracked`)."""
        recipe, tracker = self.recipe, self.tracker
        finite = torch.stack([torch.isfinite(v) for m in losses for v in m.values()]).all()
        local = [
            float(stop.requested),
            float(time.monotonic() > deadline),
            float(tracker.start_failed is not None and recipe.tracking.required),
        ]
        flags = torch.cat([torch.tensor(local, device=finite.device), (~finite).float().reshape(1)])
        preempt, out_of_time, untracked, nonfinite = self.accelerator.reduce(
            flags, reduction="sum"
        ).tolist()
        if nonfinite:
            bad = sorted({k for m in losses for k, v in m.items() if not math.isfinite(v.item())})
            rank = self.accelerator.process_index
            where = f"rank {rank}: {', '.join(bad)}" if bad else "another rank"
            raise NonFiniteLoss(
                f"non-finite loss at step {self.step} ({where}); stopped without saving, "
                f"last good checkpoint: {self.last_ckpt or 'none'}. Lower the learning "
                "rate, enable grad clipping (optim.grad_clip) or use bf16 instead of fp16"
                f"{_plugins_named(self.recipe)}."
            )
        if untracked:
            self._untracked(tracker.start_failed or "see rank 0")
        return bool(preempt), bool(out_of_time)

    def _log_losses(self, losses: list[dict[str, torch.Tensor]], due: bool) -> None:
        """Adds the step's losses (one dict per micro-batch) to the running sums (on the
        device: no sync per loss); when `due`, logs their means over the micro-batches,
        steps and ranks since the last log."""
        for micro in losses:
            for k, v in micro.items():
                self.sums[k] = self.sums[k] + v if k in self.sums else v
                self.counts[k] = self.counts.get(k, 0) + 1
        if due:  # the data wait is averaged over ranks with the losses, in one collective
            device = next(iter(losses[0].values())).device
            self.sums["data_wait_frac"] = torch.tensor(self.waits.fraction(), device=device)
            self.counts["data_wait_frac"] = 1
            self.logged = _mean_over_ranks(self.sums, self.counts, self.accelerator)
            self.sums, self.counts = {}, {}
            rates = _rates(
                self.progress.images_per_s(self.step),
                self.sched_g,
                self.sched_d,
                self.recipe.optim.schedule,
            )
            train = {f"train/{k}": v for k, v in self.logged.items()}
            self.tracker.log_metrics(train | rates, self.step)
            self._write_status("running")
        self.progress.update(self.step, self.logged if due else None)

    def _validate_now(self, stop: StopFlag) -> None:
        """The EMA generator's validation metrics, logged and kept for the checkpoint.
        Raises StopRequested when a stop cuts the pass short."""
        model = self.recipe.model
        with stop.interruptible(grace_s=DATA_WAIT_GRACE_S):
            metrics = _validate(
                self.ema.module, self.recipe, self.val, self.accelerator, stop, self.perceptual
            )
            if model.prefill != "none" and self.prefill_metrics is None and not stop.requested:
                # the baseline the net must beat, on the same samples: once, as it never moves
                alone = prefill_only(model.prefill, model.composite, self.recipe.data.channels)
                alone = alone.to(self.accelerator.device)
                baseline = _validate(alone, self.recipe, self.val, self.accelerator, stop)
                if not stop.requested:
                    self.prefill_metrics = baseline
                    logged = {f"val/prefill/{k}": v for k, v in baseline.items() if k != "samples"}
                    self.tracker.log_metrics(logged, self.step)
        if stop.requested:  # a pass cut short by a signal is no score
            return
        self.metrics = metrics
        self.tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, self.step)
        said = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        if self.prefill_metrics and model.prefill != "none":
            alone = self.prefill_metrics
            said += f"; the {model.prefill} prefill alone: " + ", ".join(
                f"{k} {alone[k]:.4g}" for k in ("hole_psnr", "hole_swd") if k in alone
            )
        self.progress.message(f"step {self.step} validation: {said}")

    def _profiled(self) -> None:
        """Counts a step for the profiler; once its record is written, says where and
        attaches rank 0's to the MLflow run."""
        self.profiler.step()
        if self.profiler.done:
            for path in self.profiler.files:
                self.tracker.log_artifact(path, PROFILE_DIR)
            if self.profiler.files:
                self.progress.message(
                    f"profile of steps {self.profiler.first}-{self.profiler.last}: "
                    f"{self.profiler.files[0]} (open in ui.perfetto.dev or TensorBoard; "
                    f"operators by time: {self.profiler.files[1].name})"
                )
            self.profiler.close()
            self.profiler = None

    def _untracked(self, why: str) -> None:
        """The MLflow run could not be started: with tracking.required (the default) the job
        fails loudly (exit 4), since a sweep's job with no record would pass for a success;
        a finished run then completes tracked when the same command is run again."""
        text = (
            f"the MLflow run could not be started ({why}); at step {self.step}, checkpoints "
            f"are kept (last: {self.last_ckpt or 'none'}). Fix the tracking store and run the "
            "same command to resume"
        )
        if self.recipe.tracking.required:
            raise TrackingFailed(text + ", or set tracking.required=false to train untracked")
        log.warning("%s; this run is untracked (tracking.required is false)", text)

    def stopped(self, signal_name: str, position: dict[int, int] | None = None) -> Outcome:
        """A stop signal: a checkpoint when one can be written here, status `preempted`.

        From the loop's end-of-step check every rank is here together and the checkpoint was
        written. From a wait for data (`position`: the stream's position before it), a single
        process writes one now; several cannot (the other ranks may be inside a collective),
        so they keep the last one. From start-up there is nothing new to save."""
        if position is not None and self.accelerator.num_processes == 1 and self.step:
            self.save_checkpoint(position)
        if self.last_ckpt is None:  # stopped in start-up before it looked: what is there
            self.last_ckpt, self.step = checkpoint.newest_step(self.run_dir)
        if self.tracker is not None:
            self.tracker.status = "KILLED"  # ended for now; a resumed job reopens the run
        if self.lock is None and self.main:  # stopped before it took the run dir
            with contextlib.suppress(OSError):
                run_status.write_if_free(self.run_dir, "preempted", self.step, self.last_ckpt)
        self._write_status("preempted")
        if hasattr(self, "progress"):  # the bar's last state above the last word, not after it
            self.progress.close()
        say = self.progress.message if hasattr(self, "progress") else _say
        say(
            f"preempted ({signal_name}) at step {self.step}; checkpoint "
            f"{self.last_ckpt or 'none yet'}. Run the same command to resume"
        )
        return Outcome("preempted", self.step, self.last_ckpt, self.metrics, {}, self.main)

    def lost_contact(self, exc: BaseException) -> bool:
        """Whether `exc` is a lost host rather than a failure: a collective that timed out,
        or one whose peer closed its connection after another rank gave up on a lost host
        (its beat says so; with three or more ranks the first to give up closes on the
        rest). A peer that closed on its own crashed: a failure."""
        if self.accelerator is None:
            return False
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        how = _collective_failure(exc, world)
        if how == "closed":
            time.sleep(2 * beat_interval(self.recipe.launch.rank_timeout_s))  # its last beat
            self.gave_up = gave_up(self.run_dir, world, rank, _started_at())
            return bool(self.gave_up)
        return how == "timeout"

    def lost(self) -> LostContact:
        """Another rank stopped answering (see `lost_contact`): which one and where
        (`heartbeat`), status `preempted` with that error (cause `lost`) as nothing new was
        saved, so a requeued job resumes from the last checkpoint; this rank's beat is
        marked lost for the others to read."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        every = beat_interval(self.recipe.launch.rank_timeout_s)
        job = os.environ.get("SLURM_JOB_ID")
        silent = who_went_silent(self.run_dir, world, rank, every, _started_at(), slurm_job=job)
        if self.heartbeat is not None:
            self.heartbeat.lost()
        if self.gave_up:  # closed on by ranks that had lost a host themselves
            ranks = ", ".join(f"rank {b.rank} on {b.host}" for b in self.gave_up)
            why = f"{ranks} gave up on a lost host and closed its connections; "
        else:
            why = f"no answer for {self.recipe.launch.rank_timeout_s} s (launch.rank_timeout_s); "
        error = LostContact(
            f"rank {rank} on {socket.gethostname()} lost contact with the other ranks at step "
            f"{self.step}: {why}{silent}. Nothing "
            f"after the last checkpoint ({self.last_ckpt or 'none'}) was saved; a requeued job "
            "or the same command resumes from it"
        )
        if self.tracker is not None:
            self.tracker.status = "KILLED"  # ended for now; the resumed job reopens the run
        if self.lock is None and self.main:  # lost in start-up, before it took the run dir
            with contextlib.suppress(OSError):
                run_status.write_if_free(
                    self.run_dir, "preempted", self.step, self.last_ckpt, str(error), "lost"
                )
        self._write_status("preempted", error=str(error), cause="lost")
        return error

    def failed(self, exc: BaseException, error: str | None = None) -> None:
        """status.json says `failed`, with `error` (default: a GanDistError's first line; for
        a crash, often another rank's death seen in a collective, its kind too) and its
        cause: `user` for a GanDistError, else `crash`."""
        if isinstance(exc, ChangedRun):  # nothing was run: the run's status stands
            return
        user = isinstance(exc, GanDistError)
        if error is None:
            error = (str(exc).strip().splitlines() or [""])[0] if user else _kind(exc)
        first, cause = error, "user" if user else "crash"
        if self.lock is None and self.main and self.run_dir.is_dir():
            # failed before taking the run dir (its data is not there): a launcher that made
            # the folder reads the outcome from it; a plain `train` made no folder to leave
            with contextlib.suppress(OSError):
                run_status.write_if_free(self.run_dir, "failed", self.step, None, first, cause)
        self._write_status("failed", error=first, cause=cause)

    def _write_status(
        self, status: str, error: str | None = None, cause: str | None = None
    ) -> None:
        """Rank 0, and only while it holds the run dir: a refused second trainer must not
        overwrite the status of the one that holds it."""
        if not (self.main and self.lock is not None):
            return
        try:
            run_status.write(self.run_dir, status, self.step, self.last_ckpt, error, cause)
        except OSError as exc:  # a full disk: the status is lost, not the error behind it
            log.warning("could not write %s: %s", self.run_dir / run_status.STATUS_FILE, exc)

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if hasattr(self, "progress"):  # before the command prints how the run ended
            self.progress.close()
        if self.profiler is not None:
            self.profiler.close()
        if self.stream is not None:
            self.stream.close()
        if self.accelerator is not None:
            self.accelerator.end_training()
        if self.lock is not None:
            self.lock.release()


def _initialise(
    start: InitialWeights, recipe: Recipe, G: nn.Module, D: nn.Module, ema: EMA
) -> tuple[InitialWeights, str]:
    """A fresh run's nets from `model.init`'s weights: the generator (and its EMA) always,
    the discriminator when the source has one of the recipe's family and settings. Returns
    the source and what was loaded, in words. Raises GanDistError when the generators
    differ."""
    start.check_generator(recipe.model, recipe.data.channels)
    try:
        G.load_state_dict(start.generator)
        ema.module.load_state_dict(start.generator)
    except RuntimeError:  # same settings, other shapes: a family whose depth follows the size
        raise GanDistError(
            f"model.init {start.source}: its generator's weights do not fit the recipe's net "
            f"at data.image_size={recipe.data.image_size}; the source was trained on "
            f"{start.image_size} px crops: set data.image_size={start.image_size}"
        ) from None
    if start.discriminator_fits(recipe.model) and _loads(D, start.discriminator):
        critic = "discriminator too"
    elif start.discriminator_fits(recipe.model):  # same settings, a size-dependent net
        critic = f"discriminator fresh (the source's was built for {start.image_size} px crops)"
    elif start.discriminator is None:
        critic = "discriminator fresh (a registered model or model folder holds none)"
    else:
        critic = "discriminator fresh (the source's differs from model.discriminator)"
    parent = f" ({start.parent})" if start.parent and start.parent != start.source else ""
    return start, f"initialised from {start.source}{parent}: generator weights, {critic}"


def _loads(net: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether `state` has `net`'s names and shapes (then it is loaded; else `net` is left
    as it was): a net whose layers follow the crop size takes no weights of another size."""
    mine = net.state_dict()
    if state.keys() != mine.keys() or any(state[k].shape != v.shape for k, v in mine.items()):
        return False
    net.load_state_dict(state)
    return True


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
        log.warning(
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


def _resume_tags(record: dict, n: int) -> dict[str, str]:
    """The MLflow tags of the run's `n`th resume that changed its recipe:
    `resume.N.step`, and `resume.N.PATH` = "old -> new" for each field."""
    changes = [Change(path, *values) for path, values in record["changes"].items()]
    return {f"resume.{n}.step": str(record["step"])} | {
        f"resume.{n}.{c.tag}": str(c).removeprefix(f"{c.path} ") for c in changes
    }


def _resume_notes(resumes: list[dict]) -> str:
    """YAML comments for RUN_DIR/recipe.yaml: the steps at which the run was resumed with
    another recipe, and what changed, so the file never claims the run always ran as it
    says now."""
    lines = []
    for record in resumes:
        changed = ", ".join(
            str(Change(path, *values)) for path, values in record["changes"].items()
        )
        lines.append(f"# resumed at step {record['step']} with changes: {changed}\n")
    return "".join(lines)


def _same_shape(ckpt: checkpoint.Checkpoint | None, world: int, data) -> bool:
    """Random state and data position resume exactly only for the same number of processes
    and data workers; otherwise weights and optimisers resume and the data order restarts."""
    if ckpt is None:
        return False
    saved = (ckpt.state["world_size"], ckpt.state["workers"])
    if saved != (world, data.workers):
        log.warning(
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


def _validate(
    generator: nn.Module,
    recipe: Recipe,
    val: str,
    accelerator,
    stop: StopFlag,
    perceptual: PerceptualMetrics | None = None,
) -> dict[str, float]:
    config = stream_config(
        recipe, "val", rank=accelerator.process_index, world=accelerator.num_processes
    )
    stream = make_stream(val, config, split="val")
    generator.eval()
    return evaluate(
        generator,
        stream,
        accelerator.device,
        lambda t: accelerator.reduce(t, reduction="sum"),
        accelerator.autocast,
        recipe.train.eval_batches,
        should_stop=lambda: stop.requested,
        perceptual=perceptual,
    )


def _unpacked_prefill(train: str, kind: str, config: StreamConfig) -> str | None:
    """A note when training batches carry a prefill (`config.prefill`) that the pack at
    `train` does not hold, so it is solved at every step; None otherwise."""
    from gan_dist.data.pack import read_manifest

    if config.prefill == "none" or config.fresh_damage or not (Path(train) / MANIFEST).is_file():
        return None
    packed = read_manifest(Path(train)).get("prefills", [])
    missing = [p for p in prefill_parts(kind) if p not in packed]
    if not missing:
        return None
    return (
        f"note: {train} holds no packed {', '.join(missing)} prefill, so it is solved at every "
        f"step (the slowest part of a CPU data path); pack with `gan-dist data pack --prefill "
        f"{','.join(prefill_parts(kind))}` to solve it once"
    )


def _validation_note(train: str, asked: str | None, val: str | None) -> str:
    """One line at start saying what the run validates on, and why."""
    if val is None:
        why = "data.val is null" if asked is None else f"the pack of {train} has no val split"
        return f"no validation ({why})"
    if asked == "auto":
        return f"validating on the val split of {val} (the training pack)"
    pack = pack_of(val)
    same = pack is not None and pack == pack_of(train)
    return f"validating on {val}" + ("" if same else " (not the pack data.train names)")


def _since_start() -> float:
    """Seconds since this process started (launcher and imports included)."""
    return time.time() - _started_at()


def _started_at() -> float:
    """When this process started (time.time(), s): every rank of a job beats after that,
    as a rank beats only once all have met (see `heartbeat`)."""
    import psutil

    return psutil.Process().create_time()


def _rates(images_per_s: float, sched_g, sched_d, schedule) -> dict[str, float]:
    """Throughput, and the learning rates where a schedule moves them (warm-up or decay): a
    constant one is a run param, and its chart drew 2e-4 as a flat line at 0."""
    out = {"images_per_s": images_per_s}
    if schedule.kind != "constant" or schedule.warmup_steps:
        out |= {"lr/generator": sched_g.get_last_lr()[0]}
        out |= {"lr/discriminator": sched_d.get_last_lr()[0]}
    if torch.cuda.is_available():
        out["gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _fixed_samples(recipe: Recipe, val: str | None) -> dict[str, torch.Tensor] | None:
    """The same held-out samples every time, so the grids over steps show one repair
    improving. Validation samples when there are any, else the first training samples,
    evenly spaced over the first GRID_POOL x tracking.sample_count: a pack writes an
    image's crops one after another, so the first few would all be crops of one photo."""
    count = recipe.tracking.sample_count
    split = "val" if val else "train"
    stream = make_stream(val or recipe.data.train, stream_config(recipe, "grid"), split=split)
    with torch.random.fork_rng(devices=[]):  # a DataLoader draws its seed: keep resume exact
        pool = next(iter(stream), None)
    if pool is None:
        return None
    size = len(pool["clean"])
    picks = torch.linspace(0, size - 1, min(count, size)).round().long()
    return {k: v[picks] for k, v in pool.items() if isinstance(v, torch.Tensor) and len(v) == size}


@torch.no_grad()
def _sample_grid(generator: nn.Module, batch: dict[str, torch.Tensor]):
    """damaged | repaired | clean, one sample a row, 8-bit (what the MLflow UI shows)."""
    device = next(generator.parameters()).device
    generator.eval()
    repaired = generator(batch["damaged"].to(device), batch["mask"].to(device)).float().cpu()

    def picture(t: torch.Tensor):
        return to_uint8(t).permute(1, 2, 0).numpy()

    return picture_grid(
        [
            [picture(d), picture(r), picture(c)]
            for d, r, c in zip(batch["damaged"], repaired, batch["clean"], strict=True)
        ],
        labels=["damaged", "repaired", "original"],
    )
