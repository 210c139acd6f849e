"""Families from a user's own package: the test plugin (tests/fixtures/plugin, installed with pip)
adds a generator, a discriminator and an adversarial objective through entry points. They
are listed and validated like built-ins, trained, registered with their package's name and
version, and repaired with through models:/NAME@ALIAS."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gan_dist.config.recipe import load_recipe
from gan_dist.core.errors import GanDistError, RecipeError
from support import hole, run_cli, tiny

TOY = {
    "model.generator.name": "toy_resnet",
    "model.generator.base_channels": None,  # a built-in family's setting: left out
    "model.generator.width": 8,
    "model.discriminator.name": "toy_patch",
    "model.discriminator.base_channels": None,
    "model.discriminator.width": 8,
    "objective.adversarial": "smooth_bce",
    "objective.adversarial_settings": "{smoothing: 0.2}",
}


def toy_recipe(*overrides: str):
    return load_recipe("quickstart", ["data.image_size=32", *overrides])


def test_installed_families_are_listed_beside_the_built_in_ones(toy_plugin):
    from gan_dist.config.families import registry

    assert {"unet", "ffc_resnet", "toy_resnet"} <= set(registry("generator").names())
    assert {"patchgan", "toy_patch"} <= set(registry("discriminator").names())
    assert {"hinge", "wgan-gp", "smooth_bce"} <= set(registry("objective").names())
    provider = registry("generator").provider("toy_resnet")
    assert (provider.package, provider.version) == ("gan-dist-toy", toy_plugin)


def test_a_plugin_family_is_validated_with_dotted_paths(toy_plugin):
    recipe = toy_recipe("model.generator.name=toy_resnet", "model.generator.width=24")
    assert recipe.model.generator.settings.width == 24
    assert recipe.model.generator.model_dump()["blocks"] == 2  # the family's default, kept
    cases = {
        ("model.generator.name=toy_resnet", "model.generator.width=0"): (
            "model.generator.width: Input should be greater than 0 (got 0)"
        ),
        ("model.generator.name=toy_resnet", "model.generator.blokcs=3"): (
            "model.generator.blokcs: unknown key (did you mean 'blocks'?); toy_resnet takes "
            "width, blocks"
        ),
        ("model.generator.name=toy_resnt",): "did you mean 'toy_resnet'?",
        ("objective.adversarial=smooth_bce", "objective.adversarial_settings={smoothing: 0.7}"): (
            "objective.adversarial_settings.smoothing: Input should be less than 0.5"
        ),
        ("model.discriminator.name=toy_ptach",): "did you mean 'toy_patch'?",
    }
    for overrides, message in cases.items():
        with pytest.raises(RecipeError) as info:
            toy_recipe(*overrides)
        assert any(message in p for p in info.value.problems), (overrides, info.value.problems)
    with pytest.raises(RecipeError) as info:
        toy_recipe("model.generator.name=resnte")
    listed = info.value.problems[0]
    assert "did you mean 'resnet'?" in listed and "toy_resnet" in listed and "unet" in listed


def test_a_recipe_can_name_a_module_attribute(toy_plugin):
    recipe = toy_recipe("model.generator.name=gan_dist_toy:generator", "model.generator.width=4")
    assert recipe.model.generator.settings.width == 4
    with pytest.raises(RecipeError, match="cannot import it"):
        toy_recipe("model.generator.name=no_such_package.nets:generator")
    with pytest.raises(RecipeError, match="is a ToyResNet|is a type, not a gan_dist Family"):
        toy_recipe("model.generator.name=gan_dist_toy:ToyResNet")


@pytest.mark.integration
def test_train_register_and_repair_with_plugin_families(toy_plugin, packed, tmp_path):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    trained = run_cli(
        "train", "quickstart", *tiny(packed, 4, **TOY, **{"tracking.uri": store}),
        "--run-dir", str(run_dir),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    registered = run_cli(
        "models",
        "register",
        str(run_dir),
        "--name",
        "toy",
        "--alias",
        "champion",
        "--tracking-uri",
        store,
    )
    assert registered.returncode == 0, registered.stdout + registered.stderr
    version = MlflowClient(store).get_model_version_by_alias("toy", "champion")
    assert version.tags["generator"] == f"toy_resnet (gan-dist-toy {toy_plugin})"
    assert version.tags["objective"] == f"smooth_bce (gan-dist-toy {toy_plugin})"
    assert version.tags["discriminator"] == f"toy_patch (gan-dist-toy {toy_plugin})"

    image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    Image.fromarray(hole(48, 40).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    repaired = run_cli(
        "repair",
        str(tmp_path / "photo.png"),
        str(tmp_path / "out.png"),
        "--model",
        "models:/toy@champion",
        "--mask",
        str(tmp_path / "mask.png"),
        "--tracking-uri",
        store,
    )
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    out = np.asarray(Image.open(tmp_path / "out.png"))
    known = ~hole(48, 40)
    assert np.array_equal(out[known], image[known]) and not np.array_equal(out, image)

    # the run's checkpoint where its plugin family is missing: named, not a traceback
    import shutil

    from gan_dist.run import checkpoint

    ckpt = shutil.copytree(checkpoint.list_checkpoints(run_dir)[0], tmp_path / "elsewhere")
    state = json.loads((ckpt / "state.json").read_text())
    state["recipe"]["model"]["generator"]["name"] = "gone_resnet"
    (ckpt / "state.json").write_text(json.dumps(state))
    result = run_cli("repair", str(tmp_path / "photo.png"), str(tmp_path / "o2.png"),
                     "--model", str(ckpt), "--mask", str(tmp_path / "mask.png"))  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "model.generator.name: 'gone_resnet' is not a generator" in result.stderr


def test_a_model_whose_plugin_is_missing_says_what_to_install(toy_plugin, tmp_path):
    from gan_dist.repair.model_file import load_model
    from support import make_model

    folder = make_model(tmp_path / "model")
    spec = json.loads((folder / "spec.json").read_text())
    assert spec["families"]["generator"]["package"] == "gan-dist"
    spec["model"]["generator"] = {"name": "ghost_net", "depth": 3}
    spec["families"]["generator"] = {"name": "ghost_net", "package": "ghost-nets", "version": "1.2"}
    (folder / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(
        GanDistError,
        match=r"'ghost_net' comes from ghost-nets 1.2, which is not "
        r"installed here: pip install 'ghost-nets==1.2'",
    ):
        load_model(str(folder))
    spec["families"]["generator"] = {"name": "ghost_net", "package": None, "version": None}
    (folder / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(GanDistError, match="comes from a module.*put its module on PYTHONPATH"):
        load_model(str(folder))


def test_a_plugin_that_cannot_be_imported_is_a_recipe_error_not_a_traceback(tmp_path, monkeypatch):
    """A missing module, a module that raises at import and malformed references gave
    ModuleNotFoundError, RuntimeError, ValueError and TypeError tracebacks."""
    (tmp_path / "broken_nets.py").write_text("raise RuntimeError('plugin import blew up')\n")
    (tmp_path / "odd_nets.py").write_text("count = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = {
        "broken_nets:fam": "cannot import it (RuntimeError: plugin import blew up)",
        ":x": "cannot import it (ValueError",
        ".rel:x": "cannot import it (TypeError",
        "odd_nets:count": "is an int, not a gan_dist Family",
    }
    for name, message in cases.items():
        with pytest.raises(RecipeError) as caught:
            toy_recipe(f"model.generator.name={name}")
        assert f"model.generator.name: '{name}'" in str(caught.value), str(caught.value)
        assert message in str(caught.value)


def test_an_installed_plugin_of_another_version_is_named_as_such(toy_plugin, tmp_path, caplog):
    """The message said `not installed` when the package was installed but did not provide
    the family, and blamed the files when it was installed at another version."""
    from safetensors.torch import save_file

    from gan_dist.nets.build import build_generator
    from gan_dist.repair.model_file import load_model, spec_for

    recipe = toy_recipe(*[f"{k}={v}" for k, v in TOY.items() if v is not None])
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(
        build_generator(recipe.model, 3, 32).state_dict(), str(folder / "weights.safetensors")
    )
    spec = spec_for(recipe, 0, {})
    assert spec["families"]["generator"] == {
        "name": "toy_resnet", "package": "gan-dist-toy", "version": toy_plugin,
    }  # fmt: skip
    spec["families"]["generator"]["version"] = "0.0.1"  # trained with an older release
    (folder / "spec.json").write_text(json.dumps(spec))
    with caplog.at_level("WARNING", logger="gan_dist.repair.model_file"):
        load_model(str(folder))  # same settings and shapes: it loads, with a warning
    assert f"gan-dist-toy 0.0.1, and gan-dist-toy {toy_plugin} is installed here" in caplog.text

    spec["model"]["generator"]["width"] = 16  # its settings changed between releases
    (folder / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(
        GanDistError, match="weights do not fit.*was trained with gan-dist-toy 0.0.1"
    ):
        load_model(str(folder))

    spec["model"]["generator"] = {"name": "gone_net"}
    spec["families"]["generator"] = {
        "name": "gone_net",
        "package": "gan-dist-toy",
        "version": "0.0.1",
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(
        GanDistError, match=f"gan-dist-toy {toy_plugin} is installed here but does not provide it"
    ):
        load_model(str(folder))
