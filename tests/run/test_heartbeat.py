"""Who went silent: each rank's beat file, and which collective failures mean a lost host."""

from __future__ import annotations

import json
import time

import pytest

from gan_dist.run.heartbeat import (
    EVERY_S,
    Heartbeat,
    beat_interval,
    beats,
    gave_up,
    who_went_silent,
)
from gan_dist.train.trainer import _collective_failure


def beat(run_dir, rank: int, host: str, step: int, at: float) -> None:
    path = run_dir / "ranks" / f"rank-{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": rank, "host": host, "step": step, "time": at}))


def test_a_rank_whose_beats_stopped_is_named_with_its_host_and_step(tmp_path):
    now = time.time()
    beat(tmp_path, 0, "node1", 40, now)
    beat(tmp_path, 1, "node2", 35, now - 20)
    beat(tmp_path, 2, "node3", 40, now - 1)
    said = who_went_silent(tmp_path, 4, me=0, now=now)
    assert said.startswith("silent: rank 1 on node2 (last beat 20 s ago, at step 35), ")
    assert "rank 3 (no beat from this job)" in said and "node3" not in said


def test_a_short_timeout_beats_often_enough_to_tell_a_silent_rank(tmp_path):
    """With launch.rank_timeout_s: 6, a rank that died as the timeout began is 6 s silent at
    its end: at one beat every 5 s that read as still beating."""
    every = beat_interval(6)
    assert every == 1.0 and beat_interval(600) == EVERY_S and beat_interval(1) == 0.5
    now = time.time()
    beat(tmp_path, 1, "node2", 12, now - 6)
    assert who_went_silent(tmp_path, 2, me=0, every_s=every, now=now).startswith("silent: ")


def test_every_rank_beating_points_at_the_network(tmp_path):
    now = time.time()
    for rank, host in enumerate(("node1", "node2", "node2")):
        beat(tmp_path, rank, host, 7, now - EVERY_S)
    said = who_went_silent(tmp_path, 3, me=0, now=now)
    assert said.startswith("every other rank still beats (on node2): the network")


def test_unreadable_beats_count_as_none(tmp_path):
    (tmp_path / "ranks").mkdir()
    (tmp_path / "ranks" / "rank-1.json").write_text("{half")
    assert beats(tmp_path, 2) == {}
    assert "rank 1 (no beat from this job)" in who_went_silent(tmp_path, 2, me=0)


def test_the_beat_thread_writes_the_current_step_until_stopped(tmp_path):
    step = [3]
    heart = Heartbeat(tmp_path, 1, lambda: step[0], every_s=0.05).start()
    try:
        assert beats(tmp_path, 2)[1].step == 3  # written at once on start
        step[0] = 9
        deadline = time.monotonic() + 10
        while beats(tmp_path, 2)[1].step != 9:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        heart.stop()
    assert not heart._thread.is_alive()


def test_a_beat_that_cannot_be_written_is_skipped(tmp_path):
    (tmp_path / "ranks").write_text("a file where the folder should be")
    Heartbeat(tmp_path, 0, lambda: 1, every_s=0.05).start().stop()  # no error


def test_an_earlier_jobs_beats_do_not_count(tmp_path):
    """Hostile pass: a rank lost before its first beat was named by the host an earlier
    job's file gave (a day old)."""
    now = time.time()
    beat(tmp_path, 1, "node7", 500, now - 86400)
    said = who_went_silent(tmp_path, 2, me=0, since=now - 60, now=now)
    assert said == (
        "silent: rank 1 (no beat from this job); its host died or the link to it is down"
    )
    beat(tmp_path, 1, "node7", 500, float("nan"))
    assert beats(tmp_path, 2) == {}


def test_a_rank_that_gave_up_marks_its_last_beat(tmp_path):
    heart = Heartbeat(tmp_path, 1, lambda: 12, every_s=0.05).start()
    assert gave_up(tmp_path, 2, me=0) == []
    heart.lost()
    (marked,) = gave_up(tmp_path, 2, me=0)
    assert (marked.rank, marked.step, marked.lost) == (1, 12, True)
    assert gave_up(tmp_path, 2, me=1) == []  # its own mark is no news to itself


@pytest.mark.parametrize(
    ("error", "world", "how"),
    [
        (RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
                      "30000ms for recv operation to complete"), 2, "timeout"),
        (RuntimeError("Application timeout caused pair closure"), 2, "timeout"),
        (RuntimeError("[Rank 1] Watchdog caught collective operation timeout: NCCL"), 8,
         "timeout"),
        (RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"), 2,
         "closed"),
        (RuntimeError("Timed out waiting 30000ms for recv operation"), 1, None),
        (RuntimeError("DataLoader timed out after 30 seconds"), 2, None),
        (ValueError("gloo timeout"), 2, None),
    ],
)  # fmt: skip
def test_how_a_collective_failed(error, world, how):
    """A host that died or whose link is down answers nothing until the timeout: a lost
    host, which requeues. A peer whose connection closed ended its process: a crash, unless
    its beat says it gave up on a lost host itself (`_Run.lost_contact`)."""
    assert _collective_failure(error, world) == how


def test_the_ranks_of_a_lost_host_are_one_entry_with_what_to_do_under_slurm(tmp_path):
    """A dead node of 8 GPUs: its 8 ranks were 8 entries; now one, with the SLURM commands
    that show whether SLURM saw it fail and keep the requeue off it."""
    now = time.time()
    for rank in range(16):
        host = "node1" if rank < 8 else "node2"
        beat(tmp_path, rank, host, 40 if rank < 8 else 35 + rank % 3, now - (1 if rank < 8 else 30))
    said = who_went_silent(tmp_path, 16, me=0, now=now, slurm_job="4711")
    assert said.startswith(
        "silent: ranks 8-15 on node2 (last beat 30 s ago, at step 37); its host died or the link"
    ), said
    assert "`sinfo -R -n node2`" in said and "scontrol update jobid=4711 excnodelist=node2" in said
    assert "node1" not in said
    apart = who_went_silent(tmp_path, 16, me=9, now=now)  # rank 9's view: node1 beats
    assert apart.startswith("silent: ranks 8, 10-15 on node2") and "sinfo" not in apart
