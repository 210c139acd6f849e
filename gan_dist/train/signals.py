"""Preemption: SLURM sends SIGUSR1 (with --signal) or SIGTERM before it kills a job. The
handler only raises a flag; the loop finishes its step, checkpoints, and exits with
EXIT_PREEMPTED so the scheduler (or a wrapper script) knows to requeue."""

from __future__ import annotations

import signal
import threading

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"
EXIT_NONFINITE = 3


class StopFlag:
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._raise)
        return self

    def _raise(self, signum: int, _frame: object) -> None:
        self.signal = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
