"""StopFlag: a stop signal is a flag for the loop, and interrupts only the waits that could
last for ever, after their grace period."""

from __future__ import annotations

import os
import signal
import time

import pytest

from gan_dist.run.signals import StopFlag, StopRequested


def test_a_signal_outside_a_wait_only_raises_the_flag():
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert stop.requested and stop.signal == "SIGUSR1"


def test_a_wait_is_interrupted_after_its_grace():
    with StopFlag() as stop:
        started = time.monotonic()
        with pytest.raises(StopRequested, match="SIGTERM"), stop.interruptible(grace_s=0.3):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # a stalled data stream
        assert 0.25 < time.monotonic() - started < 3


def test_a_wait_that_ends_within_its_grace_leaves_the_stop_to_the_loop():
    with StopFlag() as stop:
        with stop.interruptible(grace_s=1.0):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the batch came in time
        time.sleep(1.2)  # the timer was cancelled: nothing fires later
        assert stop.requested


def test_start_up_stops_at_once_and_ctrl_c_twice_stops_anywhere():
    with StopFlag() as stop, pytest.raises(StopRequested), stop.interruptible(grace_s=0):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        with pytest.raises(StopRequested, match="SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)


def test_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    with StopFlag():
        assert signal.getsignal(signal.SIGINT) != before
    assert signal.getsignal(signal.SIGINT) == before
