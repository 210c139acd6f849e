"""What rank 0 shows while training: a rich progress bar on a terminal, plain lines (one
every `log_every` steps) when the output is a file such as a SLURM log."""

from __future__ import annotations

import sys
import time


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, enabled: bool, start: int, total: int, images_per_step: int) -> None:
        self.enabled, self.total, self.images_per_step = enabled, total, images_per_step
        self.start_step, self.start_time = start, time.perf_counter()
        self.live = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            # counter and ETA before the losses, so a narrow terminal cuts only the losses
            self.live = Bar(
                TextColumn("train"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.task = self.live.add_task("", total=total, completed=start, info="")
            self.live.start()

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
            self.live.update(
                self.task, completed=step, **({"info": info} if info is not None else {})
            )
        elif losses is not None:
            done = step - self.start_step
            left = (self.total - step) * (time.perf_counter() - self.start_time) / max(done, 1)
            print(
                f"step {step}/{self.total} | {self._losses(losses)} | {rate:.1f} img/s | "
                f"eta {_fmt_time(left)}",
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
        if self.live is not None:
            self.live.stop()

    @staticmethod
    def _brief(losses: dict[str, float]) -> str:
        keys = ("d_loss", "g_adv", "g_rec")
        return " ".join(f"{k} {losses[k]:.3g}" for k in keys if k in losses)

    @staticmethod
    def _losses(losses: dict[str, float]) -> str:
        return " ".join(f"{k} {v:.4g}" for k, v in losses.items())
