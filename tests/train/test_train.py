"""The trainer as users run it: real processes, real Accelerate DDP (gloo on CPU), real
signals, on real photos packed small. Nets are tiny so the suite stays quick."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gan_dist.launch.local import Topology, node_command, per_node_args
from gan_dist.run import checkpoint
from gan_dist.run.signals import EXIT_NONFINITE, EXIT_PREEMPTED
from support import EXACT, TRACKED, cli_command, exact, run_cli, tiny, train_quickstart

pytestmark = pytest.mark.integration


@pytest.fixture()
def shards(packed) -> Path:
    return packed


# MLflow records what these runs are about (their runs, tags and versions)
tracked_quickstart = partial(train_quickstart, **TRACKED)


def weights(run_dir: Path, step: int, net: str = "generator") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{step:08d}" / f"{net}.safetensors"))


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("recipe", ["dcgan", "sngan", "wgan-gp", "quickstart"])
def test_recipes_train_stably_on_real_photos(shards, tmp_path, recipe):
    run = tmp_path / "run"
    # quickstart as users run it: validated, with its SSIM term (None: the recipe's weight)
    extra = {"train.eval_every": 6, "data.val": str(shards), "objective.ssim_weight": None}
    extra = extra if recipe == "quickstart" else {}
    result = run_cli("train", recipe, *tiny(shards, 6, **extra), "--run-dir", str(run))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("step 6/6")]
    assert lines, result.stdout
    assert "nan" not in lines[0] and "inf" not in lines[0]
    if recipe == "wgan-gp":
        assert "d_gp" in lines[0]
    if recipe == "quickstart":
        assert "step 6 validation: samples 8, psnr" in result.stdout
    ckpt = checkpoint.read(run / "checkpoints" / "step-00000006")
    assert ckpt.state["recipe"]["name"] == recipe
    assert (run / "recipe.yaml").exists()


def start_train(args: list[str], cwd: Path | None = None, launcher: list[str] | None = None):
    cmd = [*launcher, "-m", "gan_dist"] if launcher else cli_command(cold=exact(args))
    return subprocess.Popen(
        [*cmd, "train", "quickstart", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def interrupt_after(proc: subprocess.Popen, marker: str, timeout: float = 240) -> str:
    """Read output until `marker`, then SIGTERM the whole process group (as SLURM does)."""
    seen = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(marker):
            os.killpg(proc.pid, signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "".join(seen)
    seen.append(proc.stdout.read())
    proc.wait(timeout=120)
    return "".join(seen)


def two_cpu_ranks(port: str) -> list[str]:
    """Accelerate's launcher for 2 gloo ranks on this machine, as `gan-dist launch` runs it."""
    two = Topology(nodes=1, per_node=2, gpu=False)
    return node_command(two, per_node_args("0", "127.0.0.1", port), [])


@pytest.mark.parametrize(
    ("processes", "precision"),
    [(1, "bf16"), (2, "bf16"), (1, "no")],
    ids=["1-bf16", "2-bf16", "1-fp32"],
)
def test_preempted_and_resumed_run_is_bit_identical(shards, tmp_path, processes, precision):
    # dropout, 1 data worker and augmentation: the RNG state, the worker's stream position
    # and the turns drawn from it must all resume; the SSIM and texture terms (the latter
    # draws patch centres and directions from the global RNG) ride along. bf16 runs
    # with channels_last, as the CPU recipes do. The exemplar prefill beside the smooth one
    # (packed, turned with each augmented sample), the low-pass L1 and the low-passed
    # correction too (issue 25).
    extra = {
        "model.prefill": "patchmatch+biharmonic",
        "model.correction_lowpass": 2,
        "objective.l1_lowpass_sigma": 2,
        "model.generator.dropout": 0.5,
        "data.workers": 1,
        "data.augment": "true",
        "objective.ssim_weight": 1,
        "objective.texture_weight": 1,
        "train.mixed_precision": precision,
        "train.channels_last": str(precision == "bf16").lower(),
        **EXACT,
    }
    args = tiny(shards, 10, **extra)
    launcher = None
    if processes == 2:
        port = str(29500 + os.getpid() % 500)
        launcher = two_cpu_ranks(port)
        os.environ["ACCELERATE_USE_CPU"] = "1"
    try:
        straight = start_train(
            [*args, "--run-dir", str(tmp_path / "a"), "--resume", "none"], launcher=launcher
        )
        out = straight.communicate(timeout=300)[0]
        assert straight.returncode == 0, out
        assert "g_ssim" in out and "g_texture" in out

        first = start_train([*args, "--run-dir", str(tmp_path / "b")], launcher=launcher)
        out = interrupt_after(first, "step 4/10")
        if processes == 1:
            assert first.returncode == EXIT_PREEMPTED, out
        else:  # the launcher reports the signal in one line, not a traceback
            assert "gan-dist launcher: SIGTERM passed on to the ranks" in out
            assert "Traceback" not in out
        assert "preempted (SIGTERM)" in out
        saved = checkpoint.list_checkpoints(tmp_path / "b")
        assert len(saved) == 1, out
        ckpt = checkpoint.read(saved[0])  # loadable
        assert 4 <= ckpt.step < 10 and ckpt.state["world_size"] == processes

        resumed = start_train([*args, "--run-dir", str(tmp_path / "b")], launcher=launcher)
        out = resumed.communicate(timeout=300)[0]
        assert resumed.returncode == 0, out
        assert f"resumed from {saved[0]} at step {ckpt.step}" in out
    finally:
        os.environ.pop("ACCELERATE_USE_CPU", None)

    for net in ("generator", "discriminator", "ema"):
        assert_identical(weights(tmp_path / "a", 10, net), weights(tmp_path / "b", 10, net))
    if processes == 2:  # both ranks held the same weights at every checkpoint
        final = tmp_path / "b" / "checkpoints" / "step-00000010"
        digests = {
            json.loads((final / f"rank-{r}.json").read_text())["generator_sha256"] for r in (0, 1)
        }
        assert len(digests) == 1


def test_profile_steps_record_a_trace_and_the_data_wait_is_logged(shards, tmp_path, mlflow_store):
    import gzip

    import mlflow

    run = tmp_path / "run"
    result = tracked_quickstart(shards, 6, run, **{"train.profile_steps": 2})
    assert result.returncode == 0, result.stdout + result.stderr
    # steps 1 (start-up) and 2 (warm-up) are skipped, 3-4 recorded
    trace = run / "profile" / "rank0.steps3-4.pt.trace.json.gz"
    assert f"profile of steps 3-4: {trace}" in result.stdout
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"data_wait", "train_step"} <= names and any("convolution" in str(n) for n in names)
    assert "aten::" in (run / "profile" / "rank0.steps3-4.ops.txt").read_text()
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(("step 1/6", "step 6/6"))]
    assert len(lines) == 2 and all("data_wait_frac" in ln for ln in lines), result.stdout

    run_id = checkpoint.read(run / "checkpoints" / "step-00000006").state["tracking_run_id"]
    c = mlflow.MlflowClient(mlflow_store)
    history = c.get_metric_history(run_id, "train/data_wait_frac")
    assert [m.step for m in history] == list(range(1, 7))
    assert all(0 <= m.value <= 1 for m in history)
    artifacts = {a.path for a in c.list_artifacts(run_id, "profile")}
    assert artifacts == {f"profile/{trace.name}", "profile/rank0.steps3-4.ops.txt"}

    # a profile that cannot be written costs a warning, not the run
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "profile").write_text("not a folder")
    result = tracked_quickstart(shards, 4, blocked, **{"train.profile_steps": 5})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "this run has 2 step(s) left to profile, not 5" in result.stdout
    assert "could not write the profile into" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_ranks_stream_disjoint_shards_and_see_every_val_sample(shards, tmp_path):
    args = tiny(shards, 2, **{"train.eval_every": 2, "data.val": str(shards)})
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "COLUMNS": "200"}
    port = str(30000 + os.getpid() % 500)
    result = subprocess.run(
        [
            *two_cpu_ranks(port),
            "-m",
            "gan_dist",
            "train",
            "quickstart",
            *args,
            "--run-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "samples 8," in result.stdout  # 4 on each rank: every sample exactly once
    assert result.stderr.count("done: step 2") == 1  # only rank 0 reports
    ckpt = tmp_path / "r" / "checkpoints" / "step-00000002"
    positions = [json.loads((ckpt / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert all(p["data_position"] for p in positions)


def test_nan_stops_with_a_message_and_keeps_the_last_good_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    ok = train_quickstart(shards, 4, run, **{"train.checkpoint_every": 2})
    assert ok.returncode == 0, ok.stderr
    good = weights(run, 4)
    blown = train_quickstart(
        shards,
        8,
        run,
        **{"train.checkpoint_every": 1, "optim.generator.lr": 1e30, "optim.discriminator.lr": 1e30},
    )
    assert blown.returncode == EXIT_NONFINITE, blown.stdout + blown.stderr
    assert "non-finite loss at step 5" in blown.stderr
    assert "last good checkpoint" in blown.stderr and "step-00000004" in blown.stderr
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step-00000004", "step-00000002"]
    assert_identical(weights(run, 4), good)


def test_time_budget_stops_with_a_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    result = train_quickstart(
        shards,
        100000,
        run,
        **{"train.max_minutes": 0.05, "train.log_every": 1000, "data.val": str(shards)},
    )
    assert result.returncode == 0, result.stderr
    assert "time budget of 0.05 min spent at step" in result.stdout
    (saved,) = checkpoint.list_checkpoints(run)
    assert 0 < checkpoint.read(saved).step < 100000
    assert "samples 8" in result.stdout  # the final step also validates


def test_a_damaged_newest_checkpoint_is_skipped(shards, tmp_path, caplog):
    run = tmp_path / "run"
    result = train_quickstart(shards, 4, run, **{"train.checkpoint_every": 2})
    assert result.returncode == 0, result.stderr
    newest = run / "checkpoints" / "step-00000004" / "generator.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    ckpt = checkpoint.resolve(run, "auto")
    assert ckpt is not None and ckpt.step == 2
    assert "step-00000004 is unusable" in caplog.text


def test_fresh_start_refuses_a_run_dir_with_checkpoints(shards, tmp_path):
    run = tmp_path / "run"
    assert train_quickstart(shards, 2, run).returncode == 0
    again = train_quickstart(shards, 2, run, "--resume", "none")
    assert again.returncode == 1 and "already holds checkpoints" in again.stderr


def test_resuming_with_other_nets_is_a_clear_error(shards, tmp_path):
    run = tmp_path / "run"
    assert train_quickstart(shards, 2, run).returncode == 0
    wider = train_quickstart(shards, 4, run, **{"model.generator.base_channels": 12})
    assert wider.returncode == 1 and "Traceback" not in wider.stderr
    assert "model.generator.base_channels 8 -> 12" in wider.stderr
    forced = train_quickstart(
        shards, 4, run, "--resume-changed", **{"model.generator.base_channels": 12}
    )
    assert forced.returncode == 1 and "Traceback" not in forced.stderr
    assert "does not fit the recipe's model" in forced.stderr


def test_recipe_and_shards_must_agree(shards, tmp_path):
    result = train_quickstart(shards, 2, tmp_path / "r", **{"data.channels": 1})
    assert result.returncode == 1
    assert "data.train" in result.stderr and "data.channels=1" in result.stderr


def test_checkpoints_never_unpickle(shards, tmp_path):
    """A pickle planted in place of the optimiser state is refused, not executed."""
    run = tmp_path / "run"
    assert train_quickstart(shards, 2, run).returncode == 0
    ckpt = run / "checkpoints" / "step-00000002"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"generator": Evil()}, ckpt / "optimizers.pt")
    with pytest.raises(Exception, match="unusable"):
        checkpoint.read(ckpt)
    assert not marker.exists()


def test_validation_follows_the_training_pack(shards, photo_dir, tmp_path):
    """Finding 9: `--set data.train=my/shards` alone validated on the recipe's demo pack."""
    from gan_dist.config.recipe import resolve_damage
    from gan_dist.data.pack import PackOptions, pack_folder

    steps, label = resolve_damage("inpaint")
    mine = tmp_path / "mine"
    options = PackOptions(
        size=32, crops_per_image=2, damage=steps, damage_source=label, val_fraction=0.5
    )
    pack_folder(photo_dir, mine, options)
    val_count = json.loads((mine / "manifest.json").read_text())["counts"]["val"]
    assert val_count != 8  # not the size of the other pack's val split

    settings = {"data.train": mine, "data.val": None, "train.eval_every": 2}
    result = run_cli(
        "train", "quickstart", *tiny(shards, 2, **settings), "--run-dir", str(tmp_path / "a")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"validating on the val split of {mine} (the training pack)" in result.stdout
    assert f"samples {val_count}," in result.stdout

    settings = {"data.train": mine, "data.val": shards, "train.eval_every": 2}
    result = run_cli(
        "train", "quickstart", *tiny(shards, 2, **settings), "--run-dir", str(tmp_path / "b")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"validating on {shards} (not the pack data.train names)" in result.stdout
    assert "samples 8," in result.stdout


def test_checkpoints_hold_the_plain_nets_however_they_are_wrapped(tmp_path):
    """Finding 10: a compiled net (under DDP too) was saved under `_orig_mod.` names."""
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    names = list(net.state_dict())
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        wrapped = {
            "compiled": torch.compile(net),
            "compiled, then DDP": DDP(torch.compile(net)),  # what the trainer builds
            "DDP, then compiled": torch.compile(DDP(net)),
            "DDP": DDP(net),
        }
        for how, module in wrapped.items():
            assert list(checkpoint.plain(module).state_dict()) == names, how
            assert checkpoint.plain(module) is net, how
    finally:
        dist.destroy_process_group()
    assert checkpoint.plain(net) is net
    old = {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}
    assert list(checkpoint.without_compiled_names(old)) == names


def test_a_compiled_run_resumes_uncompiled_registers_and_starts_a_fine_tune(shards, tmp_path):
    """Finding 10: a `train.compile: true` run's checkpoint was refused by a resume without
    compile ("model settings must match") and model.init from it died with a traceback."""
    run = tmp_path / "run"
    compiled = train_quickstart(shards, 1, run, **{"train.compile": "true"})
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    for net in ("generator", "discriminator", "ema"):
        assert not [k for k in weights(run, 1, net) if "_orig_mod" in k], net

    resumed = train_quickstart(shards, 2, run)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout
    _uses_a_compiled_runs_checkpoint(run, tmp_path, shards)


def test_checkpoints_with_compiled_names_from_older_versions_still_load(shards, tmp_path):
    """Checkpoints an older gan-dist wrote for compiled runs carry `_orig_mod.` names:
    resume, export and model.init read them under the net's own names."""
    from safetensors.torch import save_file

    run = tmp_path / "run"
    assert train_quickstart(shards, 1, run).returncode == 0
    folder = run / "checkpoints" / "step-00000001"
    for net in ("generator", "discriminator", "ema"):
        old = {f"_orig_mod.{k}": v for k, v in weights(run, 1, net).items()}
        save_file(old, str(folder / f"{net}.safetensors"))

    resumed = train_quickstart(shards, 2, run, "--resume", str(folder))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {folder} at step 1" in resumed.stdout
    _uses_a_compiled_runs_checkpoint(folder, tmp_path, shards)


def _uses_a_compiled_runs_checkpoint(source: Path, tmp_path: Path, shards: Path) -> None:
    """The model exported from `source` loads, registers, and starts a fine-tune with both
    its nets."""
    from gan_dist.repair.model_file import load_model

    assert load_model(str(source)).net is not None
    registered = run_cli("models", "register", str(source), "--name", "from-compiled")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    tuned = train_quickstart(shards, 1, tmp_path / "tuned", **{"model.init": source})
    assert tuned.returncode == 0 and "Traceback" not in tuned.stderr, tuned.stderr
    assert "generator weights, discriminator too" in tuned.stdout, tuned.stdout


def test_a_discriminator_of_other_shapes_is_not_half_loaded():
    """model.init from a source whose discriminator has the recipe's settings but was built
    for another crop size: the net keeps its fresh weights (no traceback, nothing mixed)."""
    from torch import nn

    from gan_dist.train.trainer import _loads

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 3)).state_dict()
    assert not _loads(net, other)
    assert_identical(net.state_dict(), before)
    same = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)).state_dict()
    assert _loads(net, same)
    assert_identical(net.state_dict(), same)


def _run_tags(run: Path, step: int) -> dict[str, str]:
    import mlflow

    run_id = checkpoint.read(run / "checkpoints" / f"step-{step:08d}").state["tracking_run_id"]
    # the store the trainer tracked into, whatever an earlier test left as mlflow's default
    return mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id).data.tags


def test_a_resume_may_change_how_the_run_goes_on_but_not_what_it_is(shards, tmp_path):
    """Finding 6: a resume with other data.* settings trained on other data with no word,
    and MLflow's params kept the old values."""
    run = tmp_path / "run"
    assert tracked_quickstart(shards, 2, run).returncode == 0
    recipe_before = (run / "recipe.yaml").read_bytes()
    status_before = (run / "status.json").read_bytes()

    other = {"seed": 3, "data.augment": "true", "objective.l1_weight": 50}
    refused = tracked_quickstart(shards, 3, run, **other)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "seed 0 -> 3, data.augment false -> true, objective.l1_weight 100.0 -> 50.0" in line
    assert "--resume-changed" in line and "--run-dir NEW" in line
    assert "max_steps" not in line  # allowed, so not among what is refused
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step-00000002"]
    assert (run / "recipe.yaml").read_bytes() == recipe_before
    assert (run / "status.json").read_bytes() == status_before

    # how it runs may change, and is recorded: in the checkpoint, MLflow and recipe.yaml
    longer = tracked_quickstart(shards, 3, run, **{"train.log_every": 2})
    assert longer.returncode == 0, longer.stdout + longer.stderr
    said = (
        "changed on resume (recorded in the checkpoint and recipe.yaml, and the MLflow tags "
        "resume.1.*): train.max_steps 2 -> 3"
    )
    assert said in longer.stdout
    state = checkpoint.read(run / "checkpoints" / "step-00000003").state
    changed = {"train.max_steps": [2, 3], "train.log_every": [1, 2]}
    assert state["resumes"] == [{"step": 2, "changes": changed}]
    tags = _run_tags(run, 3)
    assert tags["resume.1.step"] == "2" and tags["resume.1.train.max_steps"] == "2 -> 3"
    notes = (run / "recipe.yaml").read_text().splitlines()[0]
    assert (
        notes == "# resumed at step 2 with changes: train.max_steps 2 -> 3, train.log_every 1 -> 2"
    )

    # asked for, what the run is changes too; later resumes compare with what ran
    forced = tracked_quickstart(
        shards, 4, run, "--resume-changed", **other, **{"train.log_every": 2}
    )
    assert forced.returncode == 0, forced.stdout + forced.stderr
    state = checkpoint.read(run / "checkpoints" / "step-00000004").state
    assert [r["step"] for r in state["resumes"]] == [2, 3]
    assert state["resumes"][1]["changes"] == {
        "seed": [0, 3],
        "data.augment": [False, True],
        "objective.l1_weight": [100.0, 50.0],
        "train.max_steps": [3, 4],
    }
    assert state["recipe"]["seed"] == 3
    tags = _run_tags(run, 4)
    assert tags["resume.2.seed"] == "0 -> 3" and tags["resume.2.train.max_steps"] == "3 -> 4"
    assert tags["resume.1.train.max_steps"] == "2 -> 3"  # the history stays
    again = tracked_quickstart(shards, 5, run, **other, **{"train.log_every": 2})
    assert again.returncode == 0, again.stdout + again.stderr  # as it now runs: no change


def test_a_resume_compares_the_data_and_the_init_by_what_they_are(shards, photo_dir, tmp_path):
    """Finding 6: a resume compared the recipe's text. `data.train=shards` resumed in another
    directory, where `shards` was another pack, trained on that with rc 0 and no word;
    `./shards/` for `shards`, and `model.init=base` made absolute, were refused."""
    import shutil

    from gan_dist.data.pack import pack_folder
    from support import make_model, options

    a, b, run = tmp_path / "a", tmp_path / "b", tmp_path / "run"
    shutil.copytree(shards, a / "shards")
    make_model(a / "base")  # its generator: base_channels 4
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for name in ("astronaut", "camera", "coins"):
        shutil.copy(photo_dir / f"{name}.png", fewer)
    pack_folder(fewer, b / "shards", options(size=32))

    def train(cwd: Path, steps: int, *args: str, **extra: object):
        settings = {"data.train": "shards", "data.val": "auto"} | extra
        return run_cli(
            "train", "quickstart", *tiny(shards, steps, **TRACKED, **settings),
            "--set", "model.generator.base_channels=4", "--run-dir", str(run), *args, cwd=cwd,
        )  # fmt: skip

    first = train(a, 2, **{"model.init": "base"})
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"initialised from {a / 'base'}" in first.stdout

    other = train(b, 3)  # the same text, another pack
    assert other.returncode == 1 and "Traceback" not in other.stderr, other.stderr
    line = other.stderr.strip().splitlines()[-1]
    assert "changes what the run is: data.train shards -> shards (the pack at " in line, line
    assert f"{b / 'shards'} is not the one this run trained on, which was at {a / 'shards'}" in line
    assert "16 -> 2 training samples" in line and "--resume-changed" in line
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step-00000002"]

    # the same pack and the same init, written another way: no change
    same = train(a, 3, **{"data.train": "./shards/", "model.init": a / "base"})
    assert same.returncode == 0, same.stdout + same.stderr
    said = (
        "changed on resume (recorded in the checkpoint and recipe.yaml, and the MLflow tags "
        "resume.1.*): train.max_steps 2 -> 3\n"
    )
    assert said in same.stdout

    forced = train(b, 4, "--resume-changed")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    state = checkpoint.read(run / "checkpoints" / "step-00000004").state
    old, new, why = state["resumes"][-1]["changes"]["data.train"]
    assert (old, new) == ("./shards/", "shards") and "16 -> 2 training samples" in why
    assert state["data_identity"]["train"]["pack"] == str(b / "shards")
    assert state["lineage"]["init"] == str(a / "base")

    # a checkpoint written before the identity was recorded: compared as text, as then
    written = run / "checkpoints" / "step-00000004" / "state.json"
    older = json.loads(written.read_text())
    del older["data_identity"]
    written.write_text(json.dumps(older))
    again = train(b, 5)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "predates gan-dist's record of its data's identity" in again.stdout
    state = checkpoint.read(run / "checkpoints" / "step-00000005").state
    assert state["data_identity"]["train"]["pack"] == str(b / "shards")


def test_a_finished_run_says_it_is_complete_and_what_it_registers(shards, tmp_path):
    """Finding 6: the same recipe on a finished run, with a new tracking.register_as,
    registered the old checkpoint under it without a word."""
    import mlflow

    run = tmp_path / "run"
    assert tracked_quickstart(shards, 2, run).returncode == 0
    recipe_before = (run / "recipe.yaml").read_text()
    again = tracked_quickstart(
        shards, 1, run, **{"tracking.register_as": "finished-run", "train.log_every": 5}
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already complete at step 2 (train.max_steps 1); nothing to train" in again.stdout
    final = run / "checkpoints" / "step-00000002"
    assert f"already complete: step 2, checkpoint {final}" in again.stderr
    assert f"the checkpoint an earlier command wrote: {final})" in again.stdout
    assert "step 3" not in again.stdout and "changed on resume" not in again.stdout
    store = os.environ["MLFLOW_TRACKING_URI"]  # the trainer's, not mlflow's default here
    (version,) = mlflow.MlflowClient(store).search_model_versions("name='finished-run'")
    assert version.tags["step"] == "2"
    # recipe.yaml shows the run as it ran (2 steps, logged every step), tracked as now
    shown = recipe_before.replace("register_as: null", "register_as: finished-run")
    assert (run / "recipe.yaml").read_text() == shown
    assert "resume.1.step" not in _run_tags(run, 2)
