"""A newcomer's first hour with their own photos (issue 24, findings 15 and 20): what they
type wrong is named where they typed it, and a start that fails leaves nothing behind."""

from __future__ import annotations

import pytest

from gan_dist.config.recipe import load_recipe
from gan_dist.core.errors import RecipeError
from support import run_cli


def test_a_set_typo_is_blamed_on_the_set_not_on_the_installed_recipe_file():
    with pytest.raises(RecipeError) as caught:
        load_recipe("quickstart", ["data.bach_size=3", "model.generator.base_channels=-1"])
    assert caught.value.source == "the built-in recipe quickstart"  # not /site-packages/...
    problems = caught.value.problems
    assert any(
        p.startswith("data.bach_size: unknown key") and p.endswith("(from --set data.bach_size=3)")
        for p in problems
    ), problems
    assert any(p.endswith("(from --set model.generator.base_channels=-1)") for p in problems)


@pytest.mark.parametrize(
    "given", ["trian.max_steps=3", "model.generatr.base_channels=8", "optim.genrator.lr=1e-3"]
)
def test_a_misspelt_section_in_a_set_is_blamed_on_the_set(given):
    """Reported at the section (`trian: unknown key`), it named no --set (hostile pass)."""
    with pytest.raises(RecipeError) as caught:
        load_recipe("quickstart", [given])
    [problem] = caught.value.problems
    assert problem.endswith(f"(from --set {given})"), problem


@pytest.mark.parametrize(
    "given",
    [
        "data.train=",
        "tracking.uri=",
        "train.max_steps= ",
        "launch.main_port=",
        "data.val=#c",
        "seed= #",
    ],
)
def test_a_set_with_no_value_is_refused_whatever_the_field(given):
    """`data.train=$SHARDS` with the variable unset: YAML read the empty value as null, so a
    field that may be null quietly took it (the default store, training without a step
    limit) and the others said `got None` (hostile pass)."""
    with pytest.raises(RecipeError) as caught:
        load_recipe("quickstart", [given])
    key = given.split("=")[0]
    assert caught.value.problems == [
        f"--set {given}: no value (an unset shell variable gives none, and YAML reads from # "
        f"on as a comment): give one, or {key}=null where the field may be empty"
    ]


@pytest.mark.parametrize("given", ["data.val=null", "data.val=~", "tracking.uri=Null"])
def test_null_said_as_null_still_clears_a_field(given):
    assert load_recipe("quickstart", [given]) is not None


@pytest.mark.integration
@pytest.mark.parametrize(
    ("flags", "blamed"),
    [
        (["--main-port", "99999"], "(from --main-port 99999)"),
        (["--nodes", "2", "--gpus-per-node", "70000"], "(from --gpus-per-node 70000)"),
        (["--set", "launch.main_port=1", "--main-port", "99999"], "(from --main-port 99999)"),
        (["--set", "launch.main_port=99999"], "(from --set launch.main_port=99999)"),
    ],
)
def test_a_launch_flag_out_of_range_is_blamed_on_that_flag(tmp_path, flags, blamed):
    """`--main-port 99999` was reported as `from --set launch.main_port=99999`, a --set the
    user never typed (hostile pass)."""
    result = run_cli(
        "launch", "quickstart", "--local", "--dry-run", *flags, "--run-dir", str(tmp_path)
    )
    assert result.returncode == 2, result.stderr
    assert blamed in result.stderr
    heading = "--set does not fit" if "--set" in blamed else "the command line does not fit"
    assert f"error: {heading} the built-in recipe quickstart:" in result.stderr


def test_a_problem_in_the_file_itself_names_the_file(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\ndata: {train: shards, bach_size: 3}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(recipe), ["data.workers=0"])
    assert caught.value.source == str(recipe)
    assert all("from --set" not in p for p in caught.value.problems), caught.value.problems


def test_the_cli_blames_a_bad_set_not_the_recipe_and_a_bad_file_on_the_file(tmp_path):
    """ "the built-in recipe quickstart is not a valid recipe" was printed above a problem
    that only a --set had (hostile pass)."""
    from typer.testing import CliRunner

    from gan_dist.cli import app

    result = CliRunner().invoke(app, ["recipes", "validate", "quickstart", "--set", "train.lr=3"])
    assert result.exit_code == 2
    assert "--set does not fit the built-in recipe quickstart:" in result.output, result.output
    assert "not a valid recipe" not in result.output
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\ndata: {train: shards, bach_size: 3}\n")
    result = CliRunner().invoke(app, ["recipes", "validate", str(recipe), "--set", "train.lr=3"])
    assert result.exit_code == 2
    assert "is not a valid recipe:" in " ".join(result.output.split()), result.output


@pytest.mark.integration
@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("shards/photoz", "shards/photoz: no such folder of packed shards (did you mean "
         "'shards/photos'?); pack images into one with `gan-dist data pack IMAGES shards/photoz`"),
        ("shards/one.tar", "shards/one.tar: no such shard file"),
        ("shards/p-{000..003}.tar", "4 of the 4 shards it names do not exist"),
        ("shards/photos", "shards/photos has no manifest.json; pack it with `gan-dist data pack`"),
    ],
)  # fmt: skip
def test_a_wrong_data_path_is_named_and_leaves_no_run_folder(given, said, tmp_path):
    (tmp_path / "shards" / "photos").mkdir(parents=True)
    result = run_cli("train", "quickstart", "--set", f"data.train={given}", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: data.train: {given}" in result.stderr and said in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()  # "1 of 1 shards ... do not exist", and runs/quickstart


@pytest.mark.integration
@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("models:/quickstart-repiar@champion",
         "no registered model named 'quickstart-repiar' (did you mean 'quickstart-repair'?); "
         "registered: "),
        ("models:/quickstart-repair@champoin",
         "quickstart-repair has no alias @champoin (did you mean @champion?); its aliases: "
         "@champion -> "),
        ("models:/quickstart-repair/999", "quickstart-repair has no version 999; its versions: "),
        ("models:/quickstart-repair", "give a version or an alias: models:/quickstart-repair/"),
    ],
)  # fmt: skip
def test_a_wrong_model_uri_lists_what_is_registered(demo, uri, said, tmp_path):
    """It said only "Registered Model with name=... not found"."""
    from gan_dist.core.errors import GanDistError
    from gan_dist.repair.model_file import initial_weights, load_model

    assert demo[0].returncode == 0, demo[0].stderr
    with pytest.raises(GanDistError) as caught:
        load_model(uri)
    assert said in str(caught.value), str(caught.value)
    if "@" in uri:  # fine-tuning resolves aliases itself
        with pytest.raises(GanDistError) as caught:
            initial_weights(uri)
        assert said in str(caught.value), str(caught.value)


def test_a_small_folder_holds_out_several_photos():
    """5% of 26 photos was one photo: every grid sample and every validation score came
    from crops of one leaf."""
    from gan_dist.data.pack import _val_split

    keys = [f"photo{i:02d}.jpg" for i in range(26)]
    assert len(_val_split(keys, 0.05, 0)) == 4
    assert len(_val_split([f"p{i}" for i in range(200)], 0.05, 0)) == 10  # the fraction rules
    assert len(_val_split(keys[:10], 0.05, 0)) == 2  # a fifth of a small folder
    assert len(_val_split(keys[:3], 0.05, 0)) == 1
    assert len(_val_split(keys, 0.0, 0)) == 0  # none asked, none held out


def test_the_repair_grid_shows_several_held_out_photos(tmp_path):
    """The grid took the first samples of the val split, which a pack writes photo by
    photo: eight crops of one image."""
    import numpy as np
    from PIL import Image

    from gan_dist.data.pack import pack_folder
    from gan_dist.train.trainer import _fixed_samples

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(26):  # each photo one colour of its own, so a crop names its photo
        Image.fromarray(np.full((64, 64, 3), (i * 9, 255 - i * 9, 40), np.uint8)).save(
            photos / f"p{i:02d}.png"
        )
    from support import options

    pack_folder(photos, tmp_path / "shards", options(size=32, crops_per_image=4, val_fraction=0.05))
    recipe = load_recipe(
        "quickstart",
        [f"data.train={tmp_path / 'shards'}", "data.image_size=32", "tracking.sample_count=8"],
    )
    samples = _fixed_samples(recipe, str(tmp_path / "shards"))
    colours = {tuple(c[:, 0, 0].tolist()) for c in samples["clean"]}
    assert len(samples["clean"]) == 8 and len(colours) >= 3, colours


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 1), (3, 2), (16, 4)])
def test_a_recipe_without_workers_takes_what_the_machine_has(cores, workers, tmp_path, monkeypatch):
    """4 workers on 2 cores: two torch warnings, and a main process with no core."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\ndata: {train: shards}\n")
    assert load_recipe(str(recipe)).data.workers == workers
    assert load_recipe(str(recipe), ["data.workers=3"]).data.workers == 3


def test_the_time_left_honours_the_time_budget(monkeypatch):
    """`eta 24m28s` under an 8-minute budget, `eta 9m18s` under the demo's 2."""
    import time

    from gan_dist.train.progress import Progress

    now = time.monotonic()
    bar = Progress(False, 0, 300, 8, deadline=now + 8 * 60)
    bar.start_time -= 60  # a minute for the first 12 steps: 300 steps would take 25 min
    assert 7 * 60 < bar.seconds_left(12) <= 8 * 60
    bar.deadline = now + 3600  # the steps end first
    assert 23 * 60 < bar.seconds_left(12) < 25 * 60
    budget_only = Progress(False, 0, None, 8, deadline=now + 120)
    assert 100 < budget_only.seconds_left(5) <= 120
    assert Progress(False, 0, None, 8).seconds_left(5) == float("inf")


@pytest.mark.integration
def test_after_ctrl_c_the_last_thing_on_the_terminal_is_what_to_do(packed, tmp_path):
    """The progress bar was drawn again after the "preempted ... run the same command"
    line, on a terminal."""
    import os
    import pty
    import select
    import signal
    import subprocess
    import sys
    import time

    from support import tiny

    exe = [sys.executable, "-m", "gan_dist"]
    main, child = pty.openpty()
    settings = tiny(packed, 100000, **{"train.log_every": 1})
    proc = subprocess.Popen(
        [*exe, "train", "quickstart", *settings, "--run-dir", str(tmp_path / "run")],
        stdin=child, stdout=child, stderr=child, env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    os.close(child)
    seen, deadline, sent = b"", time.monotonic() + 180, False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if not sent and b"img/s" in seen:  # the bar is up and training
            proc.send_signal(signal.SIGINT)
            sent = True
        if proc.poll() is not None and not ready:
            break
    proc.wait(timeout=60)
    os.close(main)
    text = seen.decode(errors="replace")
    assert proc.returncode == 75, text[-2000:]
    tail = text[text.rindex("preempted (") :]
    assert "Run the same command to resume" in tail, tail
    assert "img/s" not in tail and "train " not in tail.split("resume", 1)[1], tail


def test_a_time_budget_alone_needs_no_step_count():
    """`train.max_minutes=8` stopped at quickstart's 300 steps: the budget was capped by a
    step count the user never chose."""
    recipe = load_recipe("quickstart", ["train.max_steps=null", "train.max_minutes=8"])
    assert recipe.train.max_steps is None
    with pytest.raises(RecipeError, match="train.max_steps: null trains until train.max_minutes"):
        load_recipe("quickstart", ["train.max_steps=null"])
    with pytest.raises(RecipeError, match="optim.schedule.kind: cosine decays over"):
        load_recipe(
            "quickstart",
            ["train.max_steps=null", "train.max_minutes=8", "optim.schedule.kind=cosine"],
        )


@pytest.mark.integration
def test_training_on_a_time_budget_stops_on_time_with_a_checkpoint(packed, tmp_path):
    from support import tiny

    settings = tiny(packed, 1, **{"train.max_steps": "null", "train.max_minutes": 0.15})
    result = run_cli("train", "quickstart", *settings, "--run-dir", str(tmp_path / "run"))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "time budget of 0.15 min spent at step" in out, out
    assert "eta" in out and "step 1 |" in out  # lines with no total: `step N | ...`
    assert list((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.integration
@pytest.mark.parametrize("given", ["shards/nope", "packed"])
def test_launch_with_wrong_data_says_so_once_and_leaves_no_run_folder(given, packed, tmp_path):
    """launch made RUN_DIR/launch/recipe.yaml, status.json and the lock before its trainer
    found the data missing (or packed at another size), and said so twice (hostile pass)."""
    data = packed if given == "packed" else given  # 32 px shards; quickstart trains 128 px
    result = run_cli(
        "launch", "quickstart", "--set", f"data.train={data}", "--run-dir", "runs/x", cwd=tmp_path
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: data.train: "), out
    assert not (tmp_path / "runs").exists()


@pytest.mark.integration
def test_a_run_dir_trained_again_registers_its_own_weights(packed, tmp_path):
    """Deleting a run dir and training again into it reused the checkpoint path; registering
    took the path for the old version and moved @champion to the old weights (hostile
    pass). The same checkpoint registered twice is still one version."""
    import os
    import shutil

    from mlflow import MlflowClient

    from support import tiny

    run = tmp_path / "runs" / "X"
    name = f"redo-{tmp_path.name}"
    for seed in (0, 7):
        shutil.rmtree(run, ignore_errors=True)
        extra = {"tracking.register_as": name, "seed": seed}
        done = run_cli("train", "quickstart", *tiny(packed, 2, **extra), "--run-dir", str(run))
        assert done.returncode == 0, done.stderr
        assert "is already version" not in done.stderr, done.stderr
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    assert versions[0].run_id != versions[1].run_id
    again = run_cli("models", "register", str(run), "--name", name)
    assert again.returncode == 0 and "is already version 2" in again.stderr, again.stderr
