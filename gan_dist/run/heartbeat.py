"""RUN_DIR/ranks/rank-R.json: each rank's host and step, rewritten every few seconds.

A rank that hears nothing from the others for `launch.rank_timeout_s` (a collective times
out) reads these to say which rank went silent and on which host. The file is written by a
thread of its own, so a rank that is alive but waiting inside the same collective still
beats: a host that died stops, and a cut link that leaves every host alive shows as every
rank beating. A rank that gave up marks its file `lost` before it exits: another rank that
then sees its connections close knows it was a lost host, not a crash. Beats older than
this process are an earlier job's and do not count. The run dir is on storage every node
shares, as a multi-node run's checkpoints need anyway; a beat that cannot be written is
skipped, never an error.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gan_dist.core.files import write_bytes_atomic

EVERY_S = 5.0
RANKS_DIR = "ranks"
CLOCK_SLACK_S = 5.0  # how far the clocks of a job's hosts may differ (NTP keeps them closer)


def beat_interval(timeout_s: float) -> float:
    """Seconds between beats for a collective timeout of `timeout_s` s: every EVERY_S, or
    often enough that a rank silent since the timeout began has missed three beats by its
    end (at most every 0.5 s)."""
    return max(0.5, min(EVERY_S, timeout_s / 6))


@dataclass(frozen=True)
class Beat:
    rank: int
    host: str
    step: int
    time: float  # time.time() of the beat, s
    lost: bool = False  # the rank gave up on the others (see `Heartbeat.lost`)


class Heartbeat:
    """This rank's beat, written every `every_s` seconds (s) by a daemon thread from
    `start()` until `stop()`, with the step `step()` returns then."""

    def __init__(
        self, run_dir: Path, rank: int, step: Callable[[], int], every_s: float = EVERY_S
    ) -> None:
        self.path = run_dir / RANKS_DIR / f"rank-{rank}.json"
        self.rank, self.step, self.every_s = rank, step, every_s
        self.host = socket.gethostname()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gan-dist-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._write()  # at once: a new job's ranks replace the beats an earlier job left
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every_s + 5)

    def lost(self) -> None:
        """The last beat, marked: this rank lost contact with the others and stops."""
        self.stop()
        self._write(lost=True)

    def _run(self) -> None:
        while not self._done.wait(self.every_s):
            self._write()

    def _write(self, lost: bool = False) -> None:
        doc = {"rank": self.rank, "host": self.host, "step": self.step(), "time": time.time()}
        doc["lost"] = lost
        with contextlib.suppress(OSError):  # a full or lost disk: the checkpoint says so
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.path, json.dumps(doc).encode())


def beats(run_dir: Path, world: int, since: float = 0.0) -> dict[int, Beat]:
    """The last beat of each rank below `world` that left a readable one at or after
    `since` (a time.time(), s, less CLOCK_SLACK_S): older ones are an earlier job's."""
    found = {}
    for rank in range(world):
        try:
            doc = json.loads((run_dir / RANKS_DIR / f"rank-{rank}.json").read_text())
            lost = doc.get("lost") is True
            beat = Beat(rank, str(doc["host"]), int(doc["step"]), float(doc["time"]), lost)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if math.isfinite(beat.time) and beat.time >= since - CLOCK_SLACK_S:
            found[rank] = beat
    return found


def gave_up(run_dir: Path, world: int, me: int, since: float = 0.0) -> list[Beat]:
    """The other ranks that marked their beat `lost` (since `since`)."""
    return [b for r, b in beats(run_dir, world, since).items() if r != me and b.lost]


def who_went_silent(
    run_dir: Path,
    world: int,
    me: int,
    every_s: float = EVERY_S,
    since: float = 0.0,
    now: float | None = None,
    slurm_job: str | None = None,
) -> str:
    """In words, which ranks other than `me` stopped beating (none for 3 beats of `every_s`
    s; none at all since `since`), grouped by host, with each host's last beat and step; or
    that every rank still beats, which points at the network between the hosts. `slurm_job`
    (a SLURM job id): add how to see whether SLURM saw the hosts fail and how to keep the
    job's requeue off them."""
    now = time.time() if now is None else now
    found = beats(run_dir, world, since)
    quiet = 3 * every_s
    by_host: dict[str, list[Beat]] = {}
    unheard = []
    for rank in (r for r in range(world) if r != me):
        beat = found.get(rank)
        if beat is None:
            unheard.append(rank)
        elif now - beat.time > quiet:
            by_host.setdefault(beat.host, []).append(beat)
    silent = [
        f"{_ranks([b.rank for b in group])} on {host} (last beat "
        f"{now - max(b.time for b in group):.0f} s ago, at step {max(b.step for b in group)})"
        for host, group in by_host.items()
    ]
    if unheard:
        silent.append(f"{_ranks(unheard)} (no beat from this job)")
    if silent:
        one = len(by_host) + bool(unheard) == 1
        said = f"silent: {', '.join(silent)}; " + (
            "its host died or the link to it is down"
            if one
            else "their hosts died or the links to them are down"
        )
        if slurm_job and by_host:
            hosts, it = ",".join(by_host), "it" if len(by_host) == 1 else "them"
            said += (
                f" (`sinfo -R -n {hosts}` says whether SLURM saw {it} fail; `scontrol update "
                f"jobid={slurm_job} excnodelist={hosts}` keeps the requeue off {it})"
            )
        return said
    hosts = sorted({b.host for r, b in found.items() if r != me})
    return (
        f"every other rank still beats (on {', '.join(hosts) or 'no host on record'}): "
        "the network between the hosts failed, e.g. a cut link, a firewall or the wrong "
        "interface (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME)"
    )


def _ranks(ranks: list[int]) -> str:
    """Ranks in words: 'rank 3', 'ranks 8-15' or 'ranks 1, 3' (runs joined)."""
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    runs: list[list[int]] = []
    for r in sorted(ranks):
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    return "ranks " + ", ".join(f"{x[0]}-{x[-1]}" if len(x) > 1 else str(x[0]) for x in runs)
