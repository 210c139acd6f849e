"""Fine-tuning from the registry (`model.init`, issue 16 Build 3): the demo's champion
fine-tuned on other images starts from its weights, says what it loaded, refuses a net that
does not match, is not re-initialised on resume, and registers with its parent as a tag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gan_dist.config.recipe import load_recipe
from gan_dist.nets.build import build_generator
from gan_dist.repair.model_file import load_model
from gan_dist.run import checkpoint
from support import run_cli, tiny, train_quickstart

pytestmark = pytest.mark.integration

CHAMPION = "models:/quickstart-repair@champion"
# the demo's nets as the quickstart recipe builds them; the tiny settings on the rest
DEMO_NETS = {
    "model.generator.base_channels": None,
    "model.discriminator.base_channels": None,
    "data.image_size": 128,
}


@pytest.fixture(scope="module")
def other_photos(photo_dir, tmp_path_factory) -> Path:
    """Photos the demo did not train on, at the demo's 128 px (the quickstart U-Net's depth
    follows the crop size, so a fine-tune keeps it)."""
    out = tmp_path_factory.mktemp("other") / "shards"
    packed = run_cli("data", "pack", str(photo_dir), str(out), "--size", "128")
    assert packed.returncode == 0, packed.stdout + packed.stderr
    return out


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Over learned weights; batch-norm statistics follow the new data at once."""
    learned = [k for k in a if a[k].is_floating_point() and "running_" not in k]
    return sum(float((a[k] - b[k]).norm()) for k in learned)


def test_the_demo_champion_fine_tuned_on_other_images_keeps_its_lineage(
    demo, other_photos, tmp_path, mlflow_store
):
    from mlflow import MlflowClient

    assert demo[0].returncode == 0, demo[0].stderr
    client = MlflowClient(mlflow_store)
    parent = client.get_model_version_by_alias("quickstart-repair", "champion").version
    run_dir = tmp_path / "finetuned"
    # another seed than the demo's: a net not loaded from the champion would be far from it
    settings = DEMO_NETS | {
        "model.init": CHAMPION,
        "tracking.register_as": "finetuned",
        "seed": 7,
    }

    first = train_quickstart(other_photos, 2, run_dir, **settings)

    assert first.returncode == 0, first.stdout + first.stderr
    assert (
        f"initialised from {CHAMPION} (models:/quickstart-repair/{parent}): generator weights, "
        "discriminator fresh" in first.stdout
    ), first.stdout
    # the champion's weights, two small steps on: far nearer them than a fresh net is
    champion = load_model(CHAMPION).net.state_dict()
    ema = checkpoint.load_file(str(checkpoint.list_checkpoints(run_dir)[0] / "ema.safetensors"))
    recipe = load_recipe("quickstart", ["data.image_size=128"])
    torch.manual_seed(7)
    fresh = build_generator(recipe.model, 3, 128).state_dict()
    assert distance(ema, champion) < 0.05 * distance(fresh, champion)

    (version,) = client.search_model_versions("name='finetuned'")
    assert version.tags["parent"] == f"models:/quickstart-repair/{parent}"
    assert version.tags["init"] == CHAMPION
    assert client.get_run(version.run_id).data.tags["gan_dist.parent"] == version.tags["parent"]

    # registering the same checkpoint again makes no second version
    again = run_cli("models", "register", str(run_dir), "--name", "finetuned")
    assert again.returncode == 0, again.stderr
    assert f"registered models:/finetuned/{version.version} " in again.stdout
    assert len(client.search_model_versions("name='finetuned'")) == 1

    # a resumed fine-tune continues from its checkpoint: the init is not applied again
    resumed = train_quickstart(other_photos, 3, run_dir, **settings)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "initialised from" not in resumed.stdout

    # a run folder as the source brings its discriminator too
    from_run = train_quickstart(
        other_photos, 1, tmp_path / "again", **DEMO_NETS, **{"model.init": str(run_dir)}
    )
    assert from_run.returncode == 0, from_run.stderr
    said = f"initialised from {run_dir} (runs:/"  # the run it was tracked in, as its parent
    assert said in from_run.stdout and "generator weights, discriminator too" in from_run.stdout


def test_a_net_that_does_not_match_the_source_is_refused_naming_the_setting(demo, packed, tmp_path):
    assert demo[0].returncode == 0, demo[0].stderr
    result = run_cli(
        "train", "quickstart", *tiny(packed, 2, **{"model.init": CHAMPION}),
        "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: model.init {CHAMPION}: its generator differs"), line
    assert "base_channels 16 (recipe: 8)" in line, line
    missing = train_quickstart(
        packed, 2, tmp_path / "run2", **{"model.init": str(tmp_path / "nowhere")}
    )
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr
    line = missing.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: model.init: {tmp_path / 'nowhere'}: not found"), line
    assert not list(Path(tmp_path / "run2").glob("checkpoints/step-*"))


def test_an_alias_moves_only_to_a_version_that_scores_as_well(tmp_path):
    """The demo moved @champion to every new version, a worse one too."""
    from mlflow import MlflowClient

    from gan_dist.repair.publish import promote_if_as_good
    from gan_dist.tracking.stores import open_store

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    open_store(store)
    client = MlflowClient(store)
    client.create_registered_model("m")
    for score in (None, "30.5", "28.1", "30.5", None):
        version = client.create_model_version("m", source=str(tmp_path)).version
        if score:
            client.set_model_version_tag("m", version, "val.hole_psnr", score)
    said = [promote_if_as_good("m", v, "champion", store) for v in ("1", "2", "3", "4", "5")]
    assert said[0] == "moved @champion to version 1"  # the first: nothing to beat
    assert said[1] == "moved @champion to version 2 (val.hole_psnr 30.5)"  # unscored: no block
    assert said[2] == "kept @champion on version 2 (val.hole_psnr 30.5): version 3 scored 28.1"
    assert said[3] == "moved @champion to version 4 (val.hole_psnr 30.5)"  # as good: newer
    # trained without validation, it cannot be shown as good: it took the alias (hostile pass)
    assert said[4] == (
        "kept @champion on version 4 (val.hole_psnr 30.5): version 5 has no val.hole_psnr "
        "(no validation)"
    )
    assert str(client.get_model_version_by_alias("m", "champion").version) == "4"


def files_of(run: Path) -> dict[Path, bytes]:
    """Every file of a run dir but the lock's record of who held it last."""
    return {
        p.relative_to(run): p.read_bytes()
        for p in run.rglob("*")
        if p.is_file() and p.name != "lock.json"
    }


def test_the_readme_fine_tune_where_a_run_trained_before_is_refused_and_changes_nothing(
    packed, photo_dir, tmp_path
):
    """Finding 6: the README's fine-tune command run where quickstart had trained resumed
    that finished run, ignored model.init (whose alias did not exist), registered the old
    checkpoint as mine-repair/1, rewrote recipe.yaml to claim the init and exited 0."""
    from mlflow import MlflowClient

    from gan_dist.config.recipe import resolve_damage
    from gan_dist.data.pack import PackOptions, pack_folder

    steps, label = resolve_damage("inpaint")
    mine = tmp_path / "mine"
    pack_folder(photo_dir, mine, PackOptions(size=32, damage=steps, damage_source=label))
    run = tmp_path / "runs" / "quickstart"
    assert train_quickstart(packed, 2, run).returncode == 0
    before = files_of(run)

    fine_tune = {
        "data.train": mine,
        "model.init": "models:/nope-repair@champion",
        "tracking.register_as": "mine-repair",
    }
    for extra in ([], ["--resume-changed"]):  # an init cannot apply to a resumed run
        result = train_quickstart(packed, 2, run, *extra, **fine_tune)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("error: model.init: models:/nope-repair@champion: "), line
        assert "started from random weights" in line and f"data.train {packed} -> {mine}" in line
        assert "--run-dir NEW" in line
    assert files_of(run) == before  # recipe.yaml, status.json, checkpoints: as they were
    assert not MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_model_versions(
        "name='mine-repair'"
    )
