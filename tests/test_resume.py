"""What a resume may change (finding 6 of issue 24): the recipe against the one the
checkpoint ran with. Training through the CLI is in test_train.py and test_finetune.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gan_dist.recipe import load_recipe
from gan_dist.train.resume import (
    FLAG,
    HOW_IT_RUNS,
    ChangedRun,
    as_ran,
    changes,
    check_resume,
    how_it_runs,
)

CKPT = Path("/runs/x/checkpoints/step-00000040")


def saved(*settings: str) -> dict:
    """A checkpoint's recipe, as state.json holds it."""
    return load_recipe("quickstart", ["data.train=shards", *settings]).model_dump(mode="json")


def recipe(*settings: str):
    return load_recipe("quickstart", ["data.train=shards", *settings])


def test_a_change_of_what_the_run_is_is_refused_naming_every_field_old_and_new():
    new = recipe("data.train=other", "seed=7", "objective.l1_weight=50", "train.max_steps=9")
    with pytest.raises(ChangedRun) as caught:
        check_resume(saved(), new, CKPT, 40, allow_changed=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "seed 0 -> 7, data.train shards -> other, objective.l1_weight 100.0 -> 50.0" in message
    assert "train.max_steps" not in message  # allowed: not among the refused
    assert FLAG in message and "--run-dir NEW" in message and str(CKPT) in message

    kept, found = check_resume(saved(), new, CKPT, 40, allow_changed=True)
    assert kept == new
    assert [str(c) for c in found] == [
        "seed 0 -> 7",
        "data.train shards -> other",
        "objective.l1_weight 100.0 -> 50.0",
        "train.max_steps 300 -> 9",
    ]
    assert [c.allowed for c in found] == [False, False, False, True]


@pytest.mark.parametrize(
    "setting",
    [
        "data.channels=1",
        "data.image_size=64",
        "data.augment=true",
        "data.damage=denoise",
        "data.val=null",
        "model.generator.base_channels=24",
        "model.composite=false",
        "objective.adversarial=lsgan",
        "optim.generator.name=adamw",
        "name=other",
    ],
)
def test_data_nets_objective_and_optimiser_kind_are_what_the_run_is(setting):
    with pytest.raises(ChangedRun, match=setting.split("=")[0]):
        check_resume(saved(), recipe(setting), CKPT, 40, allow_changed=False)


@pytest.mark.parametrize(
    "setting",
    [
        "train.max_steps=20000",
        "train.max_minutes=5",
        "data.workers=2",
        "data.batch_size=4",
        "train.log_every=1",
        "train.eval_every=10",
        "train.keep_checkpoints=9",
        "optim.generator.lr=1e-5",
        "optim.grad_clip=1",
        "tracking.register_as=other",
        "launch.rank_timeout_s=900",
    ],
)
def test_how_the_run_goes_on_may_change_and_is_returned_to_be_recorded(setting):
    kept, found = check_resume(saved(), recipe(setting), CKPT, 40, allow_changed=False)
    assert [c.path for c in found] == [setting.split("=")[0]]
    assert kept == recipe(setting)


def test_model_init_on_a_run_that_did_not_start_from_it_is_refused_even_when_asked():
    """The README's fine-tune, run where quickstart had trained: the run resumed, init was
    ignored, the old checkpoint registered under the new name."""
    new = recipe("model.init=models:/mine@champion", "data.train=other")
    for allow in (False, True):
        with pytest.raises(ChangedRun) as caught:
            check_resume(saved(), new, CKPT, 40, allow_changed=allow)
        message = str(caught.value)
        assert message.startswith("model.init: models:/mine@champion: ")
        assert "started from random weights" in message and "data.train shards -> other" in message
        assert "--run-dir NEW" in message
    started = saved("model.init=models:/base/3")
    with pytest.raises(ChangedRun, match="started from models:/base/3"):
        check_resume(started, recipe("model.init=models:/base/4"), CKPT, 40, allow_changed=True)


def test_a_fine_tune_resumed_without_its_init_still_says_where_it_started():
    kept, found = check_resume(saved("model.init=/m"), recipe(), CKPT, 40, allow_changed=False)
    assert kept.model.init == "/m" and found == []
    kept, found = check_resume(
        saved("model.init=/m"), recipe("model.init=/m"), CKPT, 40, allow_changed=False
    )
    assert kept.model.init == "/m" and found == []


def test_a_field_added_since_the_checkpoint_is_no_change():
    older = saved()
    del older["data"]["augment"], older["train"]["profile_steps"]
    assert changes(older, recipe()) == []


def test_a_finished_run_is_shown_as_it_ran_with_this_commands_tracking():
    shown = as_ran(saved(), recipe("train.max_steps=5", "tracking.register_as=mine"))
    assert shown.train.max_steps == 300 and shown.tracking.register_as == "mine"


def test_every_field_a_resume_may_change_is_a_field_of_the_recipe():
    from gan_dist.train.resume import _leaves

    leaves = _leaves(saved("optim.grad_clip=1"))
    for entry in HOW_IT_RUNS:
        assert any(how_it_runs(path) and path.startswith(entry) for path in leaves), entry
