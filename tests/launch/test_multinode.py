"""gan-dist across hosts: SLURM jobs on a real cluster of three hosts on this machine, each a
network namespace with its own address, hostname and slurmd (support/slurm_hosts.py), one
rank per host talking over the hosts' links."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import EXACT, job_at_step, read_log, run_cli, tiny, wait_for

pytestmark = pytest.mark.integration


def submit(packed: Path, steps: int, run_dir: Path, *extra: str, **settings: object):
    """quickstart as a SLURM job of one CPU rank on each of two hosts, on the tiny settings."""
    args = tiny(packed, steps, **{"launch.nodes": 2, "launch.cpu_procs": 1, **settings})
    return run_cli("launch", "quickstart", "--slurm", *args, "--run-dir", str(run_dir), *extra)


def rank_files(checkpoint: Path) -> list[dict]:
    return [json.loads((checkpoint / f"rank-{r}.json").read_text()) for r in (0, 1)]


def test_a_job_on_two_hosts_trains_one_rank_on_each_in_sync(
    slurm_hosts, packed, tmp_path, mlflow_store
):
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    settings = {"tracking.experiment": "two-hosts", "tracking.register_as": "two-hosts"}
    result = submit(packed, 6, run_dir, "--follow", **settings)
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = result.stdout.splitlines()[0].strip()
    info = slurm_hosts.job(job_id)
    assert info["JobState"] == "COMPLETED" and info["NodeList"] == "node[1-2]", info
    log = (run_dir / f"slurm-{job_id}.log").read_text()
    assert re.search(r"on node\[1-2\], rank 0 at node1:\d+, 2 rank\(s\)", log), log

    ranks = rank_files(run_dir / "checkpoints" / "step-00000006")
    assert [r["host"] for r in ranks] == ["node1", "node2"]  # a rank on each host
    assert ranks[0]["generator_sha256"] == ranks[1]["generator_sha256"]  # in sync

    client = MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("two-hosts").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    history = client.get_metric_history(run.info.run_id, "train/g_rec")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]  # logged once, by rank 0
    (version,) = client.search_model_versions("name='two-hosts'")
    assert version.run_id == run.info.run_id


def weights(run_dir: Path, step: int) -> dict[str, dict]:
    from safetensors.torch import load_file

    folder = run_dir / "checkpoints" / f"step-{step:08d}"
    return {net: load_file(str(folder / f"{net}.safetensors")) for net in NETS}


NETS = ("generator", "discriminator", "ema")


def assert_same_weights(a: dict[str, dict], b: dict[str, dict]) -> None:
    import torch

    for net in NETS:
        assert a[net].keys() == b[net].keys(), net
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}: {key}"


def test_a_preempted_job_requeued_onto_other_hosts_resumes_bit_identical(
    slurm_hosts, packed, tmp_path, mlflow_store
):
    """scancel --signal=USR1 reaches the launcher on each host and every rank; rank 0 writes
    the one checkpoint; the job requeues onto node2 and node3 (node1 drained meanwhile, so
    node2, rank 1 before, is now the main node), resumes in the same MLflow run and ends with
    the weights of a 2-host run that was never stopped."""
    from mlflow import MlflowClient

    from gan_dist.run import checkpoint

    steps = 60  # 50 steps after step 10 (over 5 s on the fastest CPU) for the signal, which
    # reaches the ranks within a step or two
    straight = submit(packed, steps, tmp_path / "straight", "--follow", **EXACT)
    assert straight.returncode == 0, straight.stdout + straight.stderr

    run_dir = tmp_path / "run"
    settings = {"tracking.experiment": "preempt-hosts", "train.checkpoint_every": 100000, **EXACT}
    result = submit(packed, steps, run_dir, **settings)
    job_id, log = job_at_step(result, run_dir, 10)
    assert slurm_hosts.run("scancel", "--signal=USR1", job_id).returncode == 0
    drain = ["scontrol", "update", "nodename=node1", "state=drain", "reason=test"]
    assert slurm_hosts.run(*drain).returncode == 0  # running on, but no new job lands there
    try:
        wait_for(lambda: slurm_hosts.job(job_id).get("Restarts") == "1", 90, "the requeue")
        info = slurm_hosts.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, 240)
    finally:
        slurm_hosts.run("scontrol", "update", "nodename=node1", "state=resume")
    text = read_log(log)
    assert info["NodeList"] == "node[2-3]", info
    assert re.search(r"\(restart 1\) on node\[2-3\], rank 0 at node2:", text), text[-3000:]
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert text.count("gan-dist launcher: SIGUSR1 passed on to the ranks") == 2  # both hosts
    assert "preempted with a checkpoint; requeueing" in text and "Traceback" not in text
    stopped = int(re.search(r"resumed from \S+ at step (\d+)", text).group(1))
    # one checkpoint at the stop, written once, and the final one
    assert [checkpoint.read(c).step for c in checkpoint.list_checkpoints(run_dir)] == [
        steps,
        stopped,
    ]
    assert_same_weights(weights(run_dir, steps), weights(tmp_path / "straight", steps))

    client = MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("preempt-hosts").experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/g_rec")
    assert sorted(m.step for m in history) == list(range(1, steps + 1))


def test_the_time_limits_warning_signal_stops_both_hosts_and_the_job_resumes(
    slurm_hosts, packed, tmp_path
):
    """The job's time limit, brought near (`scontrol update TimeLimit=2`, minutes: inside the
    script's 180 s of warning, with room for slurmctld's 30 s check and the checkpoint
    before the limit itself): slurmctld sends the script's `--signal=USR1@180` to the
    launcher on each host by itself, every rank stops, one checkpoint is written, and the
    job requeues and resumes from it."""
    from gan_dist.run import checkpoint

    run_dir = tmp_path / "run"
    settings = {"train.checkpoint_every": 100000}
    result = submit(packed, 100000, run_dir, **settings)
    job_id, log = job_at_step(result, run_dir, 20)
    near = slurm_hosts.run("scontrol", "update", f"jobid={job_id}", "TimeLimit=2")
    assert near.returncode == 0, near.stderr
    try:
        # slurmctld checks time limits every 30 s; the requeued job waits 10 s (cred_expire)
        wait_for(lambda: slurm_hosts.job(job_id).get("Restarts") == "1", 120, "the requeue")
        more = slurm_hosts.run("scontrol", "update", f"jobid={job_id}", "TimeLimit=30")
        assert more.returncode == 0, more.stderr
        wait_for(lambda: "resumed from" in read_log(log), 120, f"the resume in {log}")
        kept = [checkpoint.read(c).step for c in checkpoint.list_checkpoints(run_dir)]
    finally:  # the cancel's SIGTERM checkpoints too, as a preemption does
        slurm_hosts.run("scancel", job_id)
        slurm_hosts.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, 120)
    text = read_log(log)
    first = text.split("(restart 1)")[0]
    assert first.count("gan-dist launcher: SIGUSR1 passed on to the ranks") == 2, first[-3000:]
    assert "preempted with a checkpoint; requeueing" in first and "Traceback" not in first
    stopped = int(re.search(r"resumed from \S+ at step (\d+)", text).group(1))
    assert stopped > 20 and kept == [stopped]  # one checkpoint, written once


@pytest.mark.parametrize("fault", ["host dies", "link cut"])
def test_a_lost_host_stops_the_others_in_bounded_time_and_the_requeued_job_resumes(
    slurm_hosts, packed, tmp_path, fault
):
    """node2 dies (its link is cut and its processes killed: no connection is closed, as
    when a machine loses power) or only its link is cut. Rank 0 used to sit in the
    collective until the timeout and then print a traceback; now it stops within
    launch.rank_timeout_s, says which rank on which host went silent, keeps the last good
    checkpoint and exits as preempted; SLURM requeues the job onto node1 and node3 and it
    resumes from that checkpoint to the end."""
    timeout_s, steps = 15, 80  # 55 steps after the fault at step 25: it comes within a step
    run_dir = tmp_path / "run"
    settings = {"launch.rank_timeout_s": timeout_s, "train.checkpoint_every": 10}
    result = submit(packed, steps, run_dir, **settings)
    job_id, log = job_at_step(result, run_dir, 25)
    slurm_hosts.cut("node2")
    if fault == "host dies":
        slurm_hosts.kill_node("node2")
    lost_at = time.monotonic()
    try:
        wait_for(lambda: "lost contact" in read_log(log), timeout_s + 30, "rank 0 to give up")
        said = time.monotonic() - lost_at
        info = slurm_hosts.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, 300)
    finally:
        slurm_hosts.mend("node2")
        if fault == "host dies":
            slurm_hosts.start_node("node2")
        else:
            slurm_hosts.run("scontrol", "update", "nodename=node2", "state=resume")
            slurm_hosts.wait_for_nodes("idle", ["node2"], timeout=90)
    text = read_log(log)
    assert said < timeout_s + 30, f"rank 0 took {said:.0f} s to give up"
    line = next(ln for ln in text.splitlines() if "rank 0 on node1 lost contact" in ln)
    if fault == "host dies":
        assert "silent: rank 1 on node2 (last beat" in line, line
        assert f"scontrol update jobid={job_id} excnodelist=node2` keeps" in line, line
    else:  # node2 lives on and still beats (the run dir here is not behind the cut link)
        assert "every other rank still beats (on node2): the network" in line, line
    kept = re.search(r"last checkpoint \((\S+)\)", line).group(1)
    stopped = int(kept.rsplit("-", 1)[1])
    assert 20 <= stopped < steps, line
    first_job = text.split("(restart 1)")[0]
    assert "Traceback" not in first_job, first_job[-3000:]  # lines that say it, no traceback
    assert "gan-dist launcher: rank(s) 0 stopped with exit 75" in first_job
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert int(info["Restarts"]) >= 1
    assert f"resumed from {kept} at step {stopped}" in text, text[-3000:]
    assert "training completed" in text


def test_a_main_port_in_use_on_the_main_node_is_skipped_or_refused(slurm_hosts, packed, tmp_path):
    """The port the job id gives, held on node1 by another process: torch failed to bind it
    on one node while the other waited for the timeout. Now the job takes the next free
    port; a port the recipe fixes (launch.main_port) is refused in one line."""
    probe = slurm_hosts.run("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true")
    assert probe.returncode == 0, probe.stderr
    next_job = int(probe.stdout.strip().split(";")[0]) + 1
    busy = 20000 + next_job % 40000
    hold = f"import socket, time; s = socket.socket(); s.bind(('0.0.0.0', {busy})); s.listen()"
    holder = slurm_hosts.start_in_node("node1", sys.executable, "-c", f"{hold}; time.sleep(600)")
    try:
        wait_for(lambda: busy_on_node1(slurm_hosts, busy), 30, f"port {busy} held on node1")
        untracked = {"tracking.enabled": "false"}
        result = submit(packed, 3, tmp_path / "run", "--follow", **untracked)
        assert result.returncode == 0, result.stdout + result.stderr
        job_id = result.stdout.splitlines()[0].strip()
        assert int(job_id) == next_job
        log = read_log(tmp_path / "run" / f"slurm-{job_id}.log")
        assert f"rank 0 at node1:{busy + 1}," in log and "training completed" in log, log

        fixed = submit(packed, 3, tmp_path / "fixed", "--follow", **untracked, **{
            "launch.main_port": busy,
        })  # fmt: skip
        assert fixed.returncode != 0, fixed.stdout + fixed.stderr
        job_id = fixed.stdout.splitlines()[0].strip()
        log = read_log(tmp_path / "fixed" / f"slurm-{job_id}.log")
        assert f"gan-dist: launch.main_port {busy} is in use on node1, the main node" in log, log
        assert "Traceback" not in log and "step 1/" not in log
    finally:
        holder.kill()
        holder.wait(timeout=30)


def busy_on_node1(hosts, port: int) -> bool:
    check = f"import sys; from gan_dist.launch.port import is_free; sys.exit(is_free({port}))"
    return hosts.in_node("node1", sys.executable, "-c", check).returncode == 0


def test_launch_without_slurm_on_two_hosts_trains_in_sync(slurm_hosts, packed, tmp_path):
    """`gan-dist launch --local --nodes 2 --node-rank R --main-addr node1`, started on each
    host as a user without SLURM does."""
    run_dir = tmp_path / "run"
    command = [
        str(Path(sys.executable).with_name("gan-dist")),
        *("launch", "quickstart", "--local", "--nodes", "2", "--main-addr", "node1"),
        *("--main-port", "29555", *tiny(packed, 4, **{"launch.cpu_procs": 1})),
        *("--run-dir", str(run_dir)),
    ]
    procs = [
        slurm_hosts.start_in_node(
            f"node{rank + 1}",
            *command,
            "--node-rank",
            str(rank),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out
    ranks = rank_files(run_dir / "checkpoints" / "step-00000004")
    assert [r["host"] for r in ranks] == ["node1", "node2"]
    assert ranks[0]["generator_sha256"] == ranks[1]["generator_sha256"]
