"""What a resume may change (finding 6 of issue 24): the recipe against the one the
checkpoint ran with. Training through the CLI is in test_train.py and test_finetune.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gan_dist.config.recipe import load_recipe
from gan_dist.train.resume import (
    FLAG,
    HOW_IT_RUNS,
    Change,
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


# --- the data a run trained on: compared by identity, not by the recipe's text ------------


@pytest.fixture(scope="module")
def other_pack(photo_dir, tmp_path_factory) -> Path:
    """Another pack of the same kind as `packed` (32 px): 3 photos, one sample each."""
    import shutil

    from gan_dist.config.recipe import resolve_damage
    from gan_dist.data.pack import PackOptions, pack_folder

    fewer = tmp_path_factory.mktemp("fewer")
    for name in ("astronaut", "camera", "coins"):
        shutil.copy(photo_dir / f"{name}.png", fewer)
    out = tmp_path_factory.mktemp("other") / "pack"
    steps, label = resolve_damage("inpaint")
    pack_folder(fewer, out, PackOptions(size=32, damage=steps, damage_source=label))
    return out


def identities(train: str, val: str | None = "auto") -> dict:
    """{"train", "val"} as the trainer records them (val: what data.val resolves to)."""
    from gan_dist.data.identity import data_identity
    from gan_dist.data.stream import validation_shards

    return {
        "train": data_identity(train, "train"),
        "val": data_identity(validation_shards(train, val), "val"),
    }


def in_dir(root: Path, pack: Path) -> Path:
    """A working directory `root` whose `shards` is (a copy of) `pack`."""
    import shutil

    root.mkdir()
    shutil.copytree(pack, root / "shards")
    return root


def test_one_pack_written_any_way_is_no_change(packed, tmp_path, monkeypatch):
    home = in_dir(tmp_path / "a", packed)
    (tmp_path / "link").symlink_to(home / "shards", target_is_directory=True)
    monkeypatch.chdir(home)
    ran = identities("shards")
    for text in ("./shards/", str(home / "shards"), str(tmp_path / "link"), "../a/shards"):
        data_is = identities(text)
        assert data_is == ran, text
        kept, found = check_resume(
            saved(), recipe(f"data.train={text}"), CKPT, 40, False, data_was=ran, data_is=data_is
        )
        assert found == [] and kept.data.train == text  # read as now written
    # the same shards copied elsewhere (listed in the manifest with their sha256) too
    assert identities(str(packed)) == {
        k: v and v | {"pack": str(packed.resolve())} for k, v in ran.items()
    }
    assert check_resume(
        saved(), recipe(f"data.train={packed}"), CKPT, 40, False, data_was=ran,
        data_is=identities(str(packed)),
    )[1] == []  # fmt: skip


def test_the_same_text_naming_other_data_is_refused_as_a_data_change(
    packed, other_pack, tmp_path, monkeypatch
):
    """Finding 6 (a): `data.train=shards` resumed in another working directory, where
    `shards` is another pack, trained on it with rc 0 and no word."""
    monkeypatch.chdir(in_dir(tmp_path / "a", packed))
    ran = identities("shards")
    monkeypatch.chdir(in_dir(tmp_path / "b", other_pack))
    now = identities("shards")
    with pytest.raises(ChangedRun) as caught:
        check_resume(saved(), recipe(), CKPT, 40, False, data_was=ran, data_is=now)
    message = str(caught.value)
    assert "data.train shards -> shards (the pack at " in message
    assert f"{tmp_path / 'b' / 'shards'} is not the one this run trained on, which was at " in (
        message
    )
    assert "its manifest.json differs: 16 -> 2 training samples" in message
    assert "data.val auto -> auto (as data.train)" in message  # auto follows the train pack
    assert FLAG in message

    _, found = check_resume(saved(), recipe(), CKPT, 40, True, data_was=ran, data_is=now)
    assert [c.path for c in found] == ["data.train", "data.val"]
    old, new, why = found[0].values  # recorded with how the data differs
    assert (old, new) == ("shards", "shards") and "16 -> 2 training samples" in why
    assert str(Change("data.train", *found[0].values)) == str(found[0])


def test_a_pack_replaced_in_place_is_refused_saying_what_differs(
    packed, other_pack, tmp_path, monkeypatch
):
    """Finding 6 (b): the same path, another pack in it."""
    import shutil

    pack = tmp_path / "shards"
    shutil.copytree(packed, pack)
    ran = identities(str(pack))
    shutil.rmtree(pack)
    shutil.copytree(other_pack, pack)
    with pytest.raises(ChangedRun, match=r"data\.train .* 16 -> 2 training samples") as caught:
        check_resume(
            saved(f"data.train={pack}"), recipe(f"data.train={pack}"), CKPT, 40, False,
            data_was=ran, data_is=identities(str(pack)),
        )  # fmt: skip
    assert f"the pack at {pack} is not the one this run trained on; its manifest" in str(
        caught.value
    )


def test_shard_files_are_known_by_resolved_path_size_and_time(packed, tmp_path, monkeypatch):
    import os
    import shutil

    from gan_dist.data.identity import data_identity, identity_change

    for name in ("train-000000.tar", "train-000001.tar"):
        shutil.copy(packed / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    ran = data_identity("train-{000000..000001}.tar")
    assert ran == data_identity(f"../{tmp_path.name}/train-{{000000,000001}}.tar")
    assert identity_change(ran, data_identity(str(tmp_path / "train-000000.tar"))) == (
        "the shards are not the ones this run trained on: 2 -> 1 shard files"
    )
    stat = os.stat("train-000001.tar")
    os.utime("train-000001.tar", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    why = identity_change(ran, data_identity("train-{000000..000001}.tar"))
    assert f"{tmp_path / 'train-000001.tar'} changed since (modified " in why


def test_remote_shards_are_known_by_their_urls():
    from gan_dist.data.identity import data_identity, identity_change

    ran = data_identity("s3://bucket/train-{0..1}.tar")
    assert identity_change(ran, data_identity("s3://bucket/train-{0,1}.tar")) is None
    why = identity_change(ran, data_identity("s3://bucket/train-{0..2}.tar"))
    assert why == "the shards are not the ones this run trained on: 2 -> 3 shard files"


def test_a_checkpoint_from_before_the_identity_record_compares_the_text():
    """An old state.json has no `data_identity`: its relative text cannot be resolved now,
    so the text is compared, and a refusal says why."""
    data_is = {"train": {"shards": [{"url": "s3://x/shards"}]}, "val": None}
    assert check_resume(saved(), recipe(), CKPT, 40, False, data_is=data_is)[1] == []
    with pytest.raises(ChangedRun, match="predates gan-dist's record of its data's identity"):
        check_resume(saved(), recipe("data.train=./shards/"), CKPT, 40, False, data_is=data_is)


def test_model_init_written_another_way_is_the_run_own(tmp_path, monkeypatch):
    """Finding 6: a run started with `model.init=runs/base` (its lineage holds the resolved
    path) was refused when resumed with that path made absolute, even with the flag."""
    monkeypatch.chdir(tmp_path)
    lineage = {"init": str(tmp_path / "runs" / "base"), "parent": "runs:/abc"}
    for asked in ("runs/base", "./runs/base/", str(tmp_path / "runs" / "base")):
        kept, found = check_resume(
            saved("model.init=runs/base"), recipe(f"model.init={asked}"), CKPT, 40, False,
            lineage=lineage,
        )  # fmt: skip
        assert found == [] and kept.model.init == "runs/base", asked
    # the same text from another directory names another source
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ChangedRun, match=f"started from {tmp_path / 'runs' / 'base'};"):
        check_resume(
            saved("model.init=runs/base"), recipe("model.init=runs/base"), CKPT, 40, True,
            lineage=lineage,
        )  # fmt: skip


def test_a_registered_init_is_the_same_as_its_alias_or_the_version_it_resolved_to():
    lineage = {"init": "models:/base@champion", "parent": "models:/base/3"}
    started = saved("model.init=models:/base@champion")
    for asked in ("models:/base@champion", "models:/base/3"):
        kept, found = check_resume(
            started, recipe(f"model.init={asked}"), CKPT, 40, False, lineage=lineage
        )
        assert found == [] and kept.model.init == "models:/base@champion"
    with pytest.raises(ChangedRun, match=r"started from models:/base@champion \(models:/base/3\)"):
        check_resume(started, recipe("model.init=models:/base/4"), CKPT, 40, True, lineage=lineage)


def test_a_reorder_and_the_validation_data_are_named_as_what_they_are(packed, tmp_path):
    """Hostile pass 2: brace patterns and manifests reordered were reported as other shards,
    and validation data as what the run 'trained on' with its training counts."""
    import json
    import shutil

    from gan_dist.data.identity import data_identity, identity_change

    for name in ("train-000000.tar", "train-000001.tar"):
        shutil.copy(packed / name, tmp_path / name)
    ran = data_identity(f"{tmp_path}/train-{{000000..000001}}.tar")
    why = identity_change(ran, data_identity(f"{tmp_path}/train-{{000001,000000}}.tar"))
    assert (
        why == "the shard files this run trained on, named in another order (read in another order)"
    )

    pack = shutil.copytree(packed, tmp_path / "pack")
    before = data_identity(str(pack), "val")
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["shards"].reverse()
    (pack / "manifest.json").write_text(json.dumps(manifest))
    why = identity_change(before, data_identity(str(pack), "val"), "val")
    assert why.startswith(f"the pack at {pack} is not the one this run validated on; ")
    assert "the same shards listed in another order" in why
    manifest["counts"]["val"] += 1
    manifest["counts"]["train"] += 1
    (pack / "manifest.json").write_text(json.dumps(manifest))
    why = identity_change(before, data_identity(str(pack), "val"), "val")
    assert "validation samples" in why and "training samples" not in why
