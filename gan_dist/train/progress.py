"""What rank 0 shows while training: a rich progress bar on a terminal, plain lines (one
every `log_every` steps) when the output is a file such as a SLURM log. The time left is the
sooner of the steps left at the rate so far and the time budget left (`train.max_minutes`)."""

from __future__ import annotations

import math
import sys
import time


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """`total`: the step training stops at, or None when only the time budget stops it;
    `deadline`: when the budget ends (time.monotonic() s), math.inf without one."""

    def __init__(
        self,
        enabled: bool,
        start: int,
        total: int | None,
        images_per_step: int,
        deadline: float = math.inf,
    ) -> None:
        self.enabled, self.total, self.images_per_step = enabled, total, images_per_step
        self.start_step, self.start_time, self.deadline = start, time.perf_counter(), deadline
        self.live = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as Bar

            # counter and time left before the losses, so a narrow terminal cuts only those
            self.live = Bar(
                TextColumn("train"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn("{task.fields[eta]}"),
                TextColumn("{task.fields[info]}"),
            )
            self.task = self.live.add_task("", total=total, completed=start, info="", eta="")
            self.live.start()

    def seconds_left(self, step: int) -> float:
        """The sooner of: the steps left at the rate since start, and the budget left; inf
        when neither is known yet."""
        done, elapsed = step - self.start_step, time.perf_counter() - self.start_time
        by_steps = (self.total - step) * elapsed / done if self.total and done > 0 else math.inf
        return max(0.0, min(by_steps, self.deadline - time.monotonic()))

    def _eta(self, step: int) -> str:
        left = self.seconds_left(step)
        return "eta -" if math.isinf(left) else f"eta {_fmt_time(left)}"

    def images_per_s(self, step: int) -> float:
        elapsed = time.perf_counter() - self.start_time
        return (step - self.start_step) * self.images_per_step / elapsed if elapsed else 0.0

    def update(self, step: int, losses: dict[str, float] | None) -> None:
        """losses: averaged over ranks, present on logging steps only."""
        if not self.enabled:
            return
        rate = self.images_per_s(step)
        if self.live is not None:
            info = f"{rate:.1f} img/s " + self._brief(losses) if losses else None
            fields = {"eta": self._eta(step)} | ({"info": info} if info is not None else {})
            self.live.update(self.task, completed=step, **fields)
        elif losses is not None:
            of = f"/{self.total}" if self.total else ""
            print(
                f"step {step}{of} | {self._losses(losses)} | {rate:.1f} img/s | {self._eta(step)}",
                flush=True,
            )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        """Stops the bar (its last state stays on screen); later messages print below it."""
        if self.live is not None:
            self.live.stop()
        self.live = None

    @staticmethod
    def _brief(losses: dict[str, float]) -> str:
        keys = ("d_loss", "g_adv", "g_rec")
        return " ".join(f"{k} {losses[k]:.3g}" for k in keys if k in losses)

    @staticmethod
    def _losses(losses: dict[str, float]) -> str:
        return " ".join(f"{k} {v:.4g}" for k, v in losses.items())
