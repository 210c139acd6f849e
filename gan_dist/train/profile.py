"""Where a training step's time goes: a `torch.profiler` record of a few steps, and the share
of each step spent waiting for data.

The record (`train.profile_steps: N`) skips the run's first step (start-up, lazy
initialisation, oneDNN's kernel selection), warms up on the next, then records N steps with
CPU and (where there is one) CUDA activity, tensor shapes and memory, as the PyTorch Profiler
recipe describes. Each rank writes RUN_DIR/profile/rank<R>.steps<A>-<B>.pt.trace.json.gz,
a gzipped Chrome trace that Perfetto (ui.perfetto.dev) and TensorBoard's profiler plugin
open, and rank<R>.steps<A>-<B>.ops.txt, the operators ranked by their own time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch

PROFILE_DIR = "profile"
log = logging.getLogger("gan_dist.train")


class StepProfiler:
    """`torch.profiler` over `steps` training steps; call `step()` after each training step.

    `files` lists what was written once the record is complete (empty until then, and when
    it could not be written)."""

    WAIT, WARMUP = 1, 1

    def __init__(self, run_dir: Path, steps: int, rank: int, first_step: int) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        self.dir, self.rank = run_dir / PROFILE_DIR, rank
        self.first = first_step + self.WAIT + self.WARMUP  # the first step recorded
        self.last = self.first + steps - 1
        self.files: list[Path] = []
        # kineto, the profiler's C++ side, logs at INFO and calls a missing GPU an ERROR
        os.environ.setdefault("KINETO_LOG_LEVEL", "3")
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self._prof = profile(
            activities=activities,
            schedule=schedule(wait=self.WAIT, warmup=self.WARMUP, active=steps, repeat=1),
            on_trace_ready=self._write,
            record_shapes=True,
            profile_memory=True,
        )
        self._running, self._written, self._discard = True, False, False
        self._prof.start()

    @property
    def done(self) -> bool:
        return not self._running

    def step(self) -> None:
        if self._running:
            self._prof.step()
            if self._written:  # the record is out: stop paying for the profiler
                self._prof.stop()
                self._running = False

    def region(self, name: str) -> AbstractContextManager:
        """A named span in the trace (the data wait, the training step) while recording."""
        return torch.profiler.record_function(name) if self._running else nullcontext()

    def close(self) -> None:
        """A run stopped before the record is complete writes none of it (a resumed run
        records its own steps again)."""
        if self._running:
            self._running, self._discard = False, True
            self._prof.stop()

    def _write(self, prof) -> None:
        """torch calls this when the last recorded step ends (or, for a run stopped early,
        at `close`). A trace that cannot be written costs a warning, never the run."""
        self._written = True
        if self._discard:
            return
        try:
            self.files = self._export(prof)
        except OSError as exc:
            log.warning("could not write the profile into %s (%s); training goes on", self.dir, exc)

    def _export(self, prof) -> list[Path]:
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = self.dir / f"rank{self.rank}.steps{self.first}-{self.last}"
        trace = stem.with_name(stem.name + ".pt.trace.json.gz")  # 20x smaller; both read it
        prof.export_chrome_trace(str(trace))
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
        ops = stem.with_name(stem.name + ".ops.txt")
        ops.write_text(table + "\n")
        return [trace, ops]


class DataWait:
    """The share of training time spent waiting for batches, between two readings:
    near 0 when the step is the bottleneck, near 1 when the data path is."""

    def __init__(self) -> None:
        self.waiting = 0.0
        self.since = time.perf_counter()

    @contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.waiting += time.perf_counter() - start

    def fraction(self) -> float:
        """The share since the last call, in [0, 1]; starts the next interval."""
        now = time.perf_counter()
        frac = self.waiting / (now - self.since) if now > self.since else 0.0
        self.waiting, self.since = 0.0, now
        return min(1.0, frac)
