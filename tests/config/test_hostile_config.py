"""Hostile recipes, model files and shard URLs: every one gets a one-line answer in bounded
time and memory, and no recipe value reaches a shell unless the recipe says so."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gan_dist.config.recipe import load_recipe
from gan_dist.core.errors import GanDistError, RecipeError
from gan_dist.core.textfiles import MAX_TEXT_BYTES
from gan_dist.data.stream import StreamConfig, make_stream
from gan_dist.repair.model_file import SPEC, WEIGHTS, load_model
from support import make_model, run_cli


def alias_bomb(field: str) -> str:
    """573 bytes of YAML that stand for 9**9 strings (the "billion laughs")."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    section, key = field.split(".")
    return "\n".join([*lines, f"{section}: {{{key}: *i, train: shards}}"]) + "\n"


HOSTILE_RECIPES = {
    "alias bomb in a typed field": (alias_bomb("data.batch_size"), "aliases are expanded"),
    "alias bomb in a string field": (alias_bomb("data.val"), "aliases are expanded"),
    "recursive alias": ("data: &d {train: x, more: *d}\n", "contains itself"),
    "deep nesting": ("data: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested"),
    "not UTF-8": ("name: caf\xe9\n", "not UTF-8"),
    "over the size limit": ("#" * (MAX_TEXT_BYTES + 10) + "\n", "byte limit"),
}


@pytest.mark.parametrize("case", list(HOSTILE_RECIPES))
def test_a_hostile_recipe_is_refused_quickly_with_one_line(tmp_path, case):
    text, expected = HOSTILE_RECIPES[case]
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text.encode("latin-1" if case == "not UTF-8" else "utf-8"))
    started = time.perf_counter()
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(path))
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert expected in message and str(path) in message and len(message) < 400


@pytest.mark.integration
def test_the_reported_alias_bomb_through_the_commands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb("data.batch_size"))
    assert len(path.read_bytes()) < 600
    for command in (["recipes", "validate"], ["launch", "--dry-run", "--local"]):
        started = time.perf_counter()
        result = run_cli(*command, str(path), timeout=60)
        assert result.returncode == 2, result.stderr
        assert "aliases are expanded" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr) < 1000 and time.perf_counter() - started < 30


def test_an_error_quotes_only_an_excerpt_of_a_huge_value(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"data: {{train: shards, batch_size: '{'x' * 200_000}'}}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(path))
    assert "data.batch_size" in str(caught.value) and len(str(caught.value)) < 400


# --- no shell unless asked ---------------------------------------------------------------------


@pytest.mark.integration
def test_the_reported_pipe_command_never_runs(packed, tmp_path):
    marker = tmp_path / "X"
    shard = sorted(packed.glob("train-*.tar"))[0]
    setting = f"data.train=pipe:touch {marker}; cat {shard}"
    args = ["--set", setting, "--set", "train.max_steps=1", "--set", "tracking.enabled=false"]
    for command in (["train", "quickstart", "--run-dir", str(tmp_path / "run")],):
        result = run_cli(*command, *args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "data.allow_shell" in result.stderr
    validate = run_cli("recipes", "validate", "quickstart", "--set", setting)
    assert validate.returncode == 2 and "data.allow_shell" in validate.stderr
    assert not marker.exists()
    with pytest.raises(GanDistError, match="allow_shell"):
        make_stream(f"pipe:touch {marker}", StreamConfig(2, 3, train=False))
    assert not marker.exists()


@pytest.mark.integration
def test_an_allowed_pipe_is_announced_and_runs(packed, tmp_path):
    shard = sorted(packed.glob("train-*.tar"))[0]
    settings = ["--set", f"data.train=pipe:cat {shard}", "--set", "data.allow_shell=true"]
    validate = run_cli("recipes", "validate", "quickstart", *settings)
    assert validate.returncode == 0, validate.stderr
    assert f"runs the shell command 'cat {shard}'" in validate.stderr
    dry = run_cli(
        "launch", "quickstart", "--local", "--dry-run", "--run-dir", str(tmp_path), *settings
    )
    assert dry.returncode == 0 and "runs the shell command" in dry.stderr
    config = StreamConfig(4, 3, train=False, allow_shell=True)
    assert sum(len(b["clean"]) for b in make_stream(f"pipe:cat {shard}", config)) == 4


@pytest.mark.integration
def test_shards_are_read_from_a_web_server_without_a_shell(packed, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    names = sorted(p.name for p in packed.glob("train-*.tar"))
    for name in names:
        shutil.copy(packed / name, served / name)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=served,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(port, timeout=30)
        first, last = names[0][6:12], names[-1][6:12]
        url = f"http://127.0.0.1:{port}/train-{{{first}..{last}}}.tar"
        local = f"{served}/train-{{{first}..{last}}}.tar"
        config = StreamConfig(4, 3, train=False)
        over_http = [b["clean"] for b in make_stream(url, config, "train")]
        on_disk = [b["clean"] for b in make_stream(local, config, "train")]
        assert len(over_http) == len(on_disk) == 4
        assert all(torch.equal(a, b) for a, b in zip(over_http, on_disk, strict=True))
        as_file_url = [b["clean"] for b in make_stream("file://" + local, config, "train")]
        assert all(torch.equal(a, b) for a, b in zip(as_file_url, on_disk, strict=True))
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_for(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- model files --------------------------------------------------------------------------------


@pytest.fixture
def model_copy(tmp_path) -> Path:
    return make_model(tmp_path / "model")


def _spec(folder: Path) -> dict:
    return json.loads((folder / SPEC).read_text())


SPEC_CASES = {
    "a list": lambda spec: [spec],
    "missing model": lambda spec: {k: v for k, v in spec.items() if k != "model"},
    "tile size 0": lambda spec: spec | {"tile_size": 0},
    "channels as text": lambda spec: spec | {"channels": "rgb"},
    "model a string": lambda spec: spec | {"model": "unet"},
    "metrics a list": lambda spec: spec | {"metrics": [1, 2]},
    "deep": lambda spec: spec | {"extra": json.loads("[" * 200 + "]" * 200)},
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_a_broken_spec_is_one_line_naming_spec_json(model_copy, case):
    (model_copy / SPEC).write_text(json.dumps(SPEC_CASES[case](_spec(model_copy))))
    with pytest.raises(GanDistError) as caught:
        load_model(str(model_copy))
    message = str(caught.value)
    assert SPEC in message and "\n" not in message and len(message) < 500


@pytest.mark.integration
def test_a_broken_spec_through_repair_has_no_traceback(model_copy, tmp_path):
    (model_copy / SPEC).write_text(json.dumps(_spec(model_copy) | {"tile_size": -5}))
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    result = run_cli("repair", str(image), str(tmp_path / "out.png"), "--model", str(model_copy))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "spec.json: tile_size" in result.stderr


@pytest.mark.parametrize("how", ["all NaN", "one inf", "wrong shape", "missing tensor"])
def test_weights_that_cannot_repair_are_refused_before_use(model_copy, how):
    state = load_file(str(model_copy / WEIGHTS))
    name = sorted(k for k in state if state[k].is_floating_point() and state[k].dim() == 4)[0]
    if how == "all NaN":
        state = {
            k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
            for k, v in state.items()
        }
    elif how == "one inf":
        state[name] = state[name].clone()
        state[name].view(-1)[0] = float("inf")
    elif how == "wrong shape":
        state[name] = torch.zeros(3, 3, 3, 3)
    else:
        del state[name]
    save_file(state, str(model_copy / WEIGHTS))
    with pytest.raises(GanDistError, match="NaN or infinite|do not fit"):
        load_model(str(model_copy))


def test_a_spec_asking_for_a_giant_net_allocates_nothing_before_refusing(model_copy):
    spec = _spec(model_copy)
    spec["model"]["generator"]["base_channels"] = 4096
    (model_copy / SPEC).write_text(json.dumps(spec))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(GanDistError, match="do not fit"):
        load_model(str(model_copy))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500


@pytest.mark.parametrize(
    "setting",
    [
        "data.image_size=1000000000000",
        "data.batch_size=1000000000000",
        "data.workers=100000000",
        "model.generator.base_channels=1000000000",
        "model.discriminator.base_channels=1000000000",
        "launch.nodes=1000000000",
        "data.allow_shell=yes",  # YAML 1.2: only true/false are booleans
        "train.channels_last=on",
    ],
)
def test_values_no_machine_could_run_are_refused_by_validation(setting):
    with pytest.raises(RecipeError, match=setting.split("=")[0]):
        load_recipe("quickstart", [setting])


def test_recipe_files_that_are_not_recipes_get_one_line(tmp_path):
    huge_int = tmp_path / "int.yaml"
    huge_int.write_text("seed: " + "9" * 5000 + "\n")
    with pytest.raises(RecipeError, match="a value YAML cannot read"):
        load_recipe(str(huge_int))
    with pytest.raises(RecipeError, match="not a regular file"):
        load_recipe("/dev/zero")
    text = tmp_path / "notes.yaml"
    text.write_text("root:x:0:0:root:/root:/bin/bash " * 50 + "\n")
    from gan_dist.config.recipe import resolve_damage

    with pytest.raises(RecipeError) as caught:
        resolve_damage(str(text))
    assert "not a damage file" in str(caught.value) and len(str(caught.value)) < 400


def test_integer_weights_are_refused(model_copy):
    state = load_file(str(model_copy / WEIGHTS))
    save_file({k: v.to(torch.int32) for k, v in state.items()}, str(model_copy / WEIGHTS))
    with pytest.raises(GanDistError, match="shape or type"):
        load_model(str(model_copy))


@pytest.mark.integration
def test_the_slurm_job_runs_where_launch_ran(tmp_path):
    here = tmp_path / "project"
    here.mkdir()
    run = tmp_path / "run"
    result = run_cli(
        "launch", "quickstart", "--slurm", "--dry-run", "--run-dir", str(run), cwd=here
    )
    assert result.returncode == 0, result.stderr
    assert f"cd {here} || exit 1" in result.stdout
