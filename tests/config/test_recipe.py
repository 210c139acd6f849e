from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gan_dist.cli import app
from gan_dist.config.recipe import (
    ObjectiveConfig,
    Recipe,
    builtin_recipes,
    load_recipe,
    parse_yaml,
    recipe_to_yaml,
    resolve_damage,
    validate_recipe,
)
from gan_dist.core.errors import RecipeError

runner = CliRunner()
EXPECTED = {"quickstart", "medical", "photo", "dcgan", "sngan", "wgan-gp"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_every_builtin_recipe_validates_and_has_a_description():
    found = builtin_recipes()
    assert set(found) >= EXPECTED
    for name, path in found.items():
        recipe = load_recipe(path)
        assert recipe.name == name
        assert recipe.description


def test_overrides_arrive_typed():
    r = load_recipe(
        "quickstart",
        [
            "model.generator.base_channels=32",
            "optim.generator.lr=1e-4",
            "train.channels_last=true",
            "optim.discriminator.betas=[0.0, 0.9]",
            "tracking.register_as=my-model",
        ],
    )
    assert r.model.generator.base_channels == 32
    assert r.optim.generator.lr == pytest.approx(1e-4)
    assert r.train.channels_last is True
    assert r.optim.discriminator.betas == (0.0, 0.9)
    assert r.tracking.register_as == "my-model"


def test_yaml_no_stays_a_string_and_exponents_are_floats():
    assert parse_yaml("a: no\nb: off\nc: 1e-4\nd: true") == {
        "a": "no",
        "b": "off",
        "c": 1e-4,
        "d": True,
    }
    r = load_recipe("quickstart", ["train.mixed_precision=no"])
    assert r.train.mixed_precision == "no"


def test_unknown_keys_get_did_you_mean_hints(tmp_path):
    path = write(
        tmp_path,
        """
name: x
data: {train: s/, bach_size: 4, damage: [{type: mask, coverge: [0.1, 0.2]}]}
model: {generator: {nme: unet}}
trian: {}
""",
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    problems = info.value.problems
    assert "data.bach_size: unknown key (did you mean 'batch_size'?)" in problems
    assert "data.damage[0].coverge: unknown key (did you mean 'coverage'?)" in problems
    assert (
        "model.generator.nme: unknown key (did you mean 'name'?); unet takes base_channels, "
        "norm, depth, dropout, gated" in problems
    )
    assert "trian: unknown key (did you mean 'train'?)" in problems


def test_validate_prints_every_error_with_its_path_and_exits_2(tmp_path):
    # wrong type, unknown key, missing required field, negative batch size: all at once
    path = write(
        tmp_path,
        """
data: {train: s/, batch_size: -4, workers: many, shufle_buffer: 3}
""",
    )
    result = runner.invoke(app, ["recipes", "validate", str(path)])
    assert result.exit_code == 2
    text = result.output
    assert "name: Field required" in text
    assert "data.batch_size: Input should be greater than 0 (got -4)" in text
    assert "data.workers: Input should be a valid integer" in text
    assert "data.shufle_buffer: unknown key (did you mean 'shuffle_buffer'?)" in text


def test_validate_accepts_a_good_recipe_with_overrides():
    result = runner.invoke(
        app, ["recipes", "validate", "recipes/quickstart.yaml", "--set", "data.batch_size=2"]
    )
    assert result.exit_code == 0, result.output


def test_cross_field_rules(tmp_path):
    with pytest.raises(RecipeError, match="batch norm breaks the WGAN-GP"):
        load_recipe("wgan-gp", ["model.discriminator.norm=batch"])
    with pytest.raises(RecipeError, match="gp_weight"):
        load_recipe("wgan-gp", ["objective.gp_weight=0"])


def test_damage_preset_expands_and_bad_presets_name_the_choices():
    r = load_recipe("photo")
    assert [s.type for s in r.data.damage] == ["blur", "gaussian_noise", "jpeg", "mask"]
    with pytest.raises(RecipeError) as info:
        load_recipe("photo", ["data.damage=inpant"])
    assert "did you mean 'inpaint'" in str(info.value)


def test_show_round_trips_through_validation():
    result = runner.invoke(app, ["recipes", "show", "medical", "--set", "seed=7"])
    assert result.exit_code == 0
    shown = yaml.safe_load(result.stdout)
    assert shown["seed"] == 7 and shown["train"]["mixed_precision"] == "bf16"
    assert validate_recipe(shown) == load_recipe("medical", ["seed=7"])
    assert recipe_to_yaml(validate_recipe(shown)) == result.stdout


def test_list_names_every_builtin():
    result = runner.invoke(app, ["recipes", "list"])
    assert result.exit_code == 0
    for name in EXPECTED:
        assert name in result.output


def test_bad_override_syntax_and_scalar_parent():
    with pytest.raises(RecipeError, match="expected dotted.key=value"):
        load_recipe("quickstart", ["data.batch_size"])
    with pytest.raises(RecipeError, match="data.batch_size is 8, not a section"):
        load_recipe("quickstart", ["data.batch_size.x=1"])


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "name: x\ndata: [1,\n")
    result = runner.invoke(app, ["recipes", "validate", str(path)])
    assert result.exit_code == 2
    assert "line 3" in result.output and "invalid YAML" in result.output


def test_resolve_damage_from_preset_recipe_and_list(tmp_path):
    steps, label = resolve_damage("denoise")
    assert label == "preset:denoise" and steps[0].type == "gaussian_noise"
    steps, label = resolve_damage("recipes/medical.yaml")
    assert [s.type for s in steps] == ["poisson_noise", "mask"]
    path = tmp_path / "d.yaml"
    path.write_text("- {type: blur, sigma: [1, 2]}\n- {type: jpeg, quality: [5, 500]}\n")
    with pytest.raises(RecipeError) as info:
        resolve_damage(str(path))
    assert any(p.startswith("damage[1].quality") for p in info.value.problems)


def test_the_lock_wait_must_fit_inside_the_rank_timeout():
    with pytest.raises(RecipeError, match=r"launch.lock_wait_s: 700 s must be shorter"):
        load_recipe("quickstart", ["launch.lock_wait_s=700"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective.mask_aware=true", "model.composite=false"], "mask_aware: needs model"),
        (
            [
                "objective.adversarial=wgan-gp",
                "objective.gp_weight=10",
                "objective.r1_weight=1",
                "model.discriminator.norm=layer",
            ],
            "r1_weight and mask_aware go with",
        ),
        (["data.fresh_damage=true", "data.damage=denoise"], "data.fresh_damage: data.damage draws"),
        (["objective.r1_every=0"], "objective.r1_every"),
        (["model.noise=true", "model.composite=false"], "model.noise: acts in the holes"),
        (["objective.texture_weight=1", "model.composite=false"], "texture_weight: acts in"),
        (["objective.texture_weight=-1"], "objective.texture_weight"),
    ],
)
def test_new_objective_and_data_options_are_checked_together(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("quickstart", overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.generator.name=ffc_resnet", "data.image_size=36"], "data.image_size: 36 px"),
        (["model.generator.name=ffc_resnet", "model.generator.depth=10"], "not a multiple of 1024"),
        (["objective.r1_weight=inf"], "objective.r1_weight"),
    ],
)
def test_hostile_values_of_the_new_options_are_refused_at_validation(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("quickstart", overrides)


def _float_fields(model: type, prefix: str) -> list[tuple[list[str], str]]:
    """Every float of a recipe section, recursively: ([--set needed to reach it, --set
    that makes it VALUE], its dotted path); a pair of floats is set as [VALUE, VALUE]."""
    import types
    import typing

    from pydantic import BaseModel

    from gan_dist.config.families import registry
    from gan_dist.config.recipe import _FamilyConfig

    def bare(tp):
        while True:
            origin = typing.get_origin(tp)
            if origin is typing.Annotated:
                tp = typing.get_args(tp)[0]
            elif origin in (typing.Union, types.UnionType):
                members = [a for a in typing.get_args(tp) if a is not type(None)]
                if len(members) > 1:
                    return members
                tp = members[0]
            else:
                return tp

    found: list[tuple[list[str], str]] = []
    for name, info in model.model_fields.items():
        path, tp = f"{prefix}{name}", bare(info.annotation)
        if tp is float:
            found.append(([f"{path}=VALUE"], path))
        elif typing.get_origin(tp) is tuple and float in map(bare, typing.get_args(tp)):
            found.append(([f"{path}=[VALUE, VALUE]"], path))
        elif typing.get_origin(tp) is list and isinstance(bare(typing.get_args(tp)[0]), list):
            for step in bare(typing.get_args(tp)[0]):  # data.damage: each kind of step
                kind = step.model_fields["type"].default
                for sets, inner in _float_fields(step, f"{path}[0]."):
                    key, _, value = sets[0].partition("=")
                    field = key.removeprefix(f"{path}[0].")
                    found.append(([f"{path}=[{{type: {kind}, {field}: {value}}}]"], inner))
        elif isinstance(tp, type) and issubclass(tp, _FamilyConfig):
            for family in registry(tp._kind).names():
                settings = registry(tp._kind).get(family).settings
                for sets, inner in _float_fields(settings, f"{path}."):
                    found.append(([f"{path}.name={family}", *sets], inner))
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            found += _float_fields(tp, f"{path}.")
    if model is ObjectiveConfig:  # the adversarial family's own settings
        for family in registry("objective").names():
            settings = registry("objective").get(family).settings
            for sets, inner in _float_fields(settings, f"{prefix}adversarial_settings."):
                found.append(([f"{prefix}adversarial={family}", *sets], inner))
    return found


FLOAT_FIELDS = _float_fields(Recipe, "")


def test_the_sweep_finds_the_floats_of_every_kind_of_section():
    paths = {path for _, path in FLOAT_FIELDS}
    assert {
        "objective.l1_weight",
        "objective.texture_weight",
        "optim.generator.lr",
        "optim.discriminator.betas",
        "optim.grad_clip",
        "train.ema",
        "train.max_minutes",
        "data.stall_timeout_s",
        "data.damage[0].sigma",
        "data.damage[0].p",
        "data.damage[0].coverage",
        "model.generator.dropout",
        "model.generator.global_ratio",
        "launch.lock_wait_s",
        "tracking.flush_timeout_s",
    } <= paths


@pytest.mark.parametrize("value", [".inf", "-.inf", "nan"])
@pytest.mark.parametrize(("sets", "path"), FLOAT_FIELDS, ids=[" ".join(s) for s, _ in FLOAT_FIELDS])
def test_no_float_of_a_recipe_takes_inf_or_nan(sets, path, value):
    """Finding 14: six loss weights took .inf and training stopped at step 1 asking for a
    lower learning rate; every float is refused at validation, naming its path."""
    args = [arg for s in sets for arg in ("--set", s.replace("VALUE", value))]
    result = runner.invoke(app, ["recipes", "validate", "quickstart", *args])
    assert result.exit_code == 2, result.output
    assert path in result.output and "finite" in result.output, result.output


def test_a_damage_file_with_an_infinite_sigma_is_refused(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("- {type: gaussian_noise, sigma: [0.01, .inf]}\n")
    with pytest.raises(RecipeError) as info:
        resolve_damage(str(path))
    assert any(
        p.startswith("damage[0].sigma[1]: Input should be a finite") for p in info.value.problems
    )


def test_a_saved_recipe_naming_a_family_not_installed_says_to_install_it():
    """A run folder whose plugin package is gone suggested a package.module:name reference,
    which a file gan-dist wrote may not name (hostile pass, issue 26)."""
    from gan_dist.config.recipe import SAVED

    raw = load_recipe("quickstart").model_dump(mode="json")
    raw["model"]["generator"] = {"name": "wide_from_a_gone_package"}
    with pytest.raises(RecipeError) as caught:
        validate_recipe(raw, source="state.json", context=SAVED)
    [problem] = caught.value.problems
    assert problem.startswith("model.generator.name: 'wide_from_a_gone_package' is not a")
    assert "install the package that provides it" in problem
    assert "package.module:name" not in problem
    with pytest.raises(RecipeError) as caught:  # typed in a recipe, a reference is offered
        validate_recipe(raw, source="mine.yaml")
    assert "package.module:name reference" in caught.value.problems[0]
