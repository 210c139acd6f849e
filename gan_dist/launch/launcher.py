"""Accelerate's launcher, without the traceback it prints when a signal stops it.

torch elastic (under `accelerate launch`) passes SIGTERM and SIGUSR1 on to the ranks
(`PET_SIGNALS_TO_HANDLE`), waits for them to write their checkpoint, then re-raises the
signal as a SignalException. Uncaught, that prints a traceback in the log of every preempted
job, which reads like a crash. Here it becomes one line and the exit status of a death by
that signal (128 + its number). Whether the ranks were preempted cleanly is not the
launcher's to say: callers read the run's status.json, as before. Ranks that all exited 75
on their own (one lost contact with a rank on another host and said so) are one line and
exit 75 too, not torch elastic's ChildFailedError report. Any other failure (a rank that
crashed, a bad argument) comes out exactly as Accelerate reports it.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from gan_dist.run.signals import EXIT_PREEMPTED

    args = launch_command_parser().parse_args()
    try:
        launch_command(args)
    except ChildFailedError as exc:
        codes = {f.exitcode for f in exc.failures.values()}
        if codes != {EXIT_PREEMPTED}:
            raise
        ranks = ", ".join(str(r) for r in sorted(exc.failures))
        print(
            f"gan-dist launcher: rank(s) {ranks} stopped with exit {EXIT_PREEMPTED} "
            "(their lines above say why); a requeue resumes from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_PREEMPTED
    except SignalException as exc:
        return _stopped(signal.Signals(int(exc.sigval)))
    except SystemExit as exc:  # accelerate >= 1.16 turns the SignalException into this exit
        code = exc.code if isinstance(exc.code, int) else 1
        if code - 128 in (signal.SIGTERM, signal.SIGUSR1):
            return _stopped(signal.Signals(code - 128))
        raise
    return 0


def _stopped(sig: signal.Signals) -> int:
    print(
        f"gan-dist launcher: {sig.name} passed on to the ranks, which have stopped",
        file=sys.stderr,
        flush=True,
    )
    return 128 + int(sig)


if __name__ == "__main__":
    sys.exit(main())
