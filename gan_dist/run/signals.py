"""Stopping on a signal: SLURM sends SIGUSR1 (with --signal) or SIGTERM before it kills a job,
and a person at a terminal presses Ctrl-C (SIGINT). All three mean "checkpoint and stop".

The handler only raises a flag; the loop finishes its step, checkpoints, writes `preempted`
into status.json and exits with EXIT_PREEMPTED. The sbatch script decides to requeue from
status.json (a multi-rank launcher's exit code may be any rank's), within
launch.slurm.max_requeues. Where the process
could wait without bound (start-up, a data stream that has stalled) the code runs inside
`StopFlag.interruptible`: a signal there raises `StopRequested` after a grace period, so a
stop is honoured at any moment. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"
EXIT_NONFINITE = 3
EXIT_TRACKING = 4  # the MLflow run could not be started (tracking.required)


class StopRequested(BaseException):
    """A stop signal that could not wait for the end of the step.

    A BaseException, like KeyboardInterrupt, so that libraries' `except Exception` (the
    DataLoader's wait for a batch among them) let it through."""


class Terminated(SystemExit):
    """SIGTERM where nothing trains (`gan-dist repair`): unwinds like Ctrl-C, exit 128 + 15.
    Its own class, so that code it interrupts (a plugin's net) is not blamed for it."""


def ctrl_c_is_a_flag() -> bool:
    """Whether a StopFlag holds SIGINT here: Ctrl-C then only raises the flag, so a
    KeyboardInterrupt is code's doing (`raise KeyboardInterrupt`), never the user's."""
    handler = signal.getsignal(signal.SIGINT)
    return isinstance(getattr(handler, "__self__", None), StopFlag)


def from_outside(exc: BaseException) -> bool:
    """Whether an exception is a stop from outside the code it unwinds through (a Ctrl-C,
    a StopFlag's StopRequested, repair's SIGTERM), not that code's fault."""
    if isinstance(exc, KeyboardInterrupt):
        return not ctrl_c_is_a_flag()
    return isinstance(exc, StopRequested | Terminated)


class StopFlag:
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}
        self._grace_s: float | None = None  # inside `interruptible`: seconds a stop may wait
        self._armed = False  # our SIGALRM timer runs (cancel only ours, never another's)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        return self

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signal == "SIGINT" and name == "SIGINT":  # Ctrl-C twice: no more waiting
            raise StopRequested(name)
        self.signal = name
        if self._grace_s is not None:
            self._arm()

    def _on_alarm(self, _signum: int, _frame: object) -> None:
        if self._grace_s is not None and self.signal:
            raise StopRequested(self.signal)

    def _arm(self) -> None:
        if self._grace_s == 0:
            raise StopRequested(self.signal)
        if not self._armed:
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, self._grace_s)

    def _disarm(self) -> None:
        if self._armed and threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)
        self._armed = False

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @contextmanager
    def interruptible(self, grace_s: float) -> Iterator[None]:
        """Code that may wait without bound: a stop signal (one already received included)
        raises StopRequested here once `grace_s` seconds have passed (0: at once). Code that
        finishes within the grace leaves the stop to the loop's end-of-step check."""
        outer = self._grace_s
        self._grace_s = grace_s
        try:
            if self.signal:
                self._arm()
            yield
        finally:
            self._grace_s = outer
            if outer is None:
                self._disarm()

    def __exit__(self, *exc: object) -> None:
        self._disarm()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
