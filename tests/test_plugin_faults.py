"""Plugins that misbehave (issue 24, findings 5, 8 and 13): names two packages declare, a
plugin that ends the process, and builders that break the family contract. Each is one line
naming the family and its package, exit 2, never a traceback and never a silent success.

The plugins here are real installed distributions as pip lays them out (a module plus a
`NAME-VERSION.dist-info` folder with METADATA and entry_points.txt) on a folder put on the
path, so entry points are discovered by importlib.metadata as in a user's environment."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from gan_dist.errors import RecipeError
from gan_dist.recipe import load_recipe
from gan_dist.registry import PluginError

NETS = """
import sys
import torch
from pydantic import BaseModel, PositiveInt, field_validator
from torch import nn
from gan_dist.registry import Family, Settings

class Width(Settings):
    width: PositiveInt = 4

class Exiting(Settings):
    width: PositiveInt = 4

    @field_validator("width")
    @classmethod
    def _leave(cls, value):
        sys.exit(0)

def conv(s, in_channels, out_channels, image_size):
    return nn.Sequential(nn.Conv2d(in_channels, s.width, 3, padding=1),
                         nn.Conv2d(s.width, out_channels, 3, padding=1))

def halves(s, in_channels, out_channels, image_size):
    return nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

def other_names(s, channels_in, channels_out, size):
    return conv(s, channels_in, channels_out, size)

def raises(s, in_channels, out_channels, image_size):
    raise RuntimeError("no GPU kernel for this layer")

def exits(s, in_channels, out_channels, image_size):
    sys.exit(0)

class ExitsLater(nn.Module):
    # calls sys.exit from call `after` + 1 on (in training only, with `training`)

    def __init__(self, in_channels, out_channels, after, training):
        super().__init__()
        self.body = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.calls, self.after, self.only_training = 0, after, training

    def forward(self, x):
        self.calls += 1
        if self.calls > self.after and (self.training or not self.only_training):
            sys.exit(0)
        return self.body(x)

class LogitsOnly(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.body = nn.Conv2d(in_channels, 1, 4, 2, 1)

    def forward(self, x, features=False):
        return self.body(x)

class Plain(BaseModel):  # not gan-dist's Settings: pydantic alone lets inf through
    width: PositiveInt = 4
    gain: float = 1.0

fine = Family(conv, Width)
plain_settings = Family(conv, Plain)
zero_divisor = Family(conv, Width, lambda s, size: 0)
float_divisor = Family(conv, Width, lambda s, size: 2.5)
numpy_divisor = Family(conv, Width, lambda s, size: __import__("numpy").int64(2))
wrong_size = Family(halves, Width)
renamed = Family(other_names, Width)
raising = Family(raises, Width)
returns_none = Family(lambda s, in_channels, out_channels, image_size: None, Width)
exiting_builder = Family(exits, Width)
exiting_settings = Family(conv, Exiting)
exiting_forward = Family(lambda s, in_channels, out_channels, image_size:
                         ExitsLater(in_channels, out_channels, 1, True), Width)
exiting_later = Family(lambda s, in_channels, out_channels, image_size:
                       ExitsLater(in_channels, out_channels, 2, False), Width)
logits_only = Family(lambda s, in_channels, image_size: LogitsOnly(in_channels), Width)
"""


def install(root: Path, dist: str, version: str, modules: dict[str, str], points: str) -> None:
    """A distribution laid out as pip installs one: its modules and its dist-info."""
    for name, code in modules.items():
        (root / f"{name}.py").write_text(code)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(points)
    (info / "RECORD").write_text("".join(f"{name}.py,,\n" for name in modules))


@pytest.fixture()
def site(tmp_path, monkeypatch) -> Path:
    """A folder of installed plugins, on the path of this process and of the commands the
    test starts."""
    from gan_dist import registry

    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    registry._entry_points.cache_clear()
    registry._warn_shadowed.cache_clear()
    yield root
    registry._entry_points.cache_clear()
    for name in [m for m in sys.modules if m.startswith(("faulty_", "twin_", "quit_"))]:
        del sys.modules[name]


def recipe(*overrides: str):
    return load_recipe(
        "quickstart",
        ["data.image_size=32", *overrides],
    )


# --- finding 5: names that collide ---


def test_a_name_two_packages_declare_is_refused_naming_both(site):
    for dist in ("twin-a", "twin-b"):
        module = dist.replace("-", "_") + "_nets"
        install(
            site, dist, "1.0", {module: NETS},
            f"[gan_dist.generators]\ntwin = {module}:fine\n",
        )  # fmt: skip
    with pytest.raises(RecipeError) as caught:
        recipe("model.generator.name=twin")
    text = str(caught.value)
    assert "two installed packages declare a generator of this name" in text
    assert "twin-a 1.0 (twin_a_nets:fine)" in text and "twin-b 1.0 (twin_b_nets:fine)" in text
    # a reference picks one, as the message says
    chosen = recipe("model.generator.name=twin_b_nets:fine", "model.generator.width=3")
    assert chosen.model.generator.settings.width == 3


def test_a_plugin_that_declares_a_built_in_name_is_named_and_the_built_in_kept(site, caplog):
    install(
        site,
        "faulty-unet",
        "2.0",
        {"faulty_unet": NETS},
        "[gan_dist.generators]\nunet = faulty_unet:fine\n",
    )
    with caplog.at_level(logging.WARNING, logger="gan_dist.registry"):
        got = load_recipe("quickstart", ["data.image_size=32"])
        load_recipe("quickstart", ["data.image_size=64"])
    assert got.model.generator.settings.base_channels  # the built-in U-Net's settings
    warned = [r.getMessage() for r in caplog.records if "unet" in r.getMessage()]
    assert len(warned) == 1, warned  # once per process, not at every lookup
    assert (
        "the built-in family is used; faulty-unet 2.0 (faulty_unet:fine) also declares" in warned[0]
    )


# --- finding 8: plugin code that ends the process ---


@pytest.mark.parametrize(
    ("how", "setting"),
    [
        ("entry point", "model.generator.name=quitter"),
        ("reference", "model.generator.name=quit_nets:family"),
        ("objective", "objective.adversarial=quitting"),
    ],
)
def test_a_plugin_that_calls_sys_exit_on_import_fails_every_command(site, how, setting):
    install(
        site, "quit-nets", "0.3", {"quit_nets": "import sys\nsys.exit(0)\n"},
        "[gan_dist.generators]\nquitter = quit_nets:family\n"
        "[gan_dist.objectives]\nquitting = quit_nets:family\n",
    )  # fmt: skip
    for command in (["recipes", "validate"], ["train"], ["launch"]):
        result = run_cli(*command, "quickstart", "--set", setting, timeout=120)
        out = result.stdout + result.stderr
        assert result.returncode == 2, (command, out)
        assert "cannot import it (called sys.exit(0))" in out, (command, out)
        assert "quit_nets:family" in out and "Traceback" not in out, (command, out)


def test_a_plugin_that_exits_in_its_settings_or_builder_is_named(site):
    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    with pytest.raises(
        PluginError,
        match=r"faulty_nets:exiting_settings.*its settings failed \(called sys.exit\(0\)\)",
    ):
        recipe("model.generator.name=faulty_nets:exiting_settings")
    r = recipe("model.generator.name=faulty_nets:exiting_builder")
    from gan_dist.nets import build_generator

    with pytest.raises(
        PluginError, match=r"\(faulty-nets 0.1\): its builder failed \(called sys.exit\(0\)\)"
    ):
        build_generator(r.model, 3, 32)


@pytest.mark.integration
def test_a_plugin_that_exits_during_training_fails_the_run(site, packed, tmp_path):
    from conftest import tiny

    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    plugin = {"model.generator.name": "faulty_nets:exiting_forward"}
    settings = tiny(packed, 3, **plugin, **{"model.generator.base_channels": None})
    result = run_cli("train", "quickstart", *settings, "--run-dir", str(tmp_path / "run"))
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "faulty_nets.py" in out and "called sys.exit(0) during training" in out, out
    assert "done" not in result.stderr.lower().split("error")[0]
    assert '"status": "failed"' in (tmp_path / "run" / "status.json").read_text()


# --- finding 13: builders that break the contract ---

CONTRACT = {
    "zero_divisor": r"size_divisor returned 0 for 32 px; it must return a whole number of px",
    "float_divisor": r"size_divisor returned 2\.5 for 32 px",
    "wrong_size": (
        r"its net returned \(N,3,16,16\) for \(N,4,32,32\); a generator must return "
        r"\(N,3,32,32\)"
    ),
    "renamed": r"its builder failed \(TypeError: .*unexpected keyword argument 'in_channels'",
    "raising": r"its builder failed \(RuntimeError: no GPU kernel for this layer\)",
    "returns_none": r"its builder returned NoneType, not a torch.nn.Module",
}


@pytest.mark.parametrize("family", CONTRACT)
def test_a_generator_that_breaks_the_contract_is_one_line_naming_it(site, family):
    from gan_dist.nets import build_generator

    install(
        site,
        "faulty-nets",
        "0.1",
        {"faulty_nets": NETS},
        f"[gan_dist.generators]\n{family} = faulty_nets:{family}\n",
    )
    with pytest.raises((PluginError, RecipeError)) as caught:
        build_generator(recipe(f"model.generator.name={family}").model, 3, 32)
    text = str(caught.value)
    assert f"generator '{family}' (faulty-nets 0.1)" in text, text
    assert __import__("re").search(CONTRACT[family], text), text
    assert "\n" not in text


def test_a_discriminator_without_features_is_named(site):
    from gan_dist.nets import build_discriminator

    install(
        site,
        "faulty-nets",
        "0.1",
        {"faulty_nets": NETS},
        "[gan_dist.discriminators]\nlogits_only = faulty_nets:logits_only\n",
    )
    r = recipe("model.discriminator.name=logits_only")
    expected = (
        r"discriminator 'logits_only' \(faulty-nets 0.1\): called with features=True on "
        r"\(N,7,32,32\), its net returned \(N,1,16,16\)"
    )
    with pytest.raises(PluginError, match=expected):
        build_discriminator(r.model.discriminator, 3, 32)


def test_a_net_too_large_for_memory_is_refused_before_it_is_allocated(site):
    """1e8 channels: 6.4e9 weights, 24 GiB as fp32, five copies to train; measured on the
    meta device, so the refusal takes no memory and no time."""
    import psutil

    from gan_dist.nets import build_generator

    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    r = recipe("model.generator.name=faulty_nets:fine", "model.generator.width=100000000")
    before, started = psutil.Process().memory_info().rss, time.monotonic()
    with pytest.raises(PluginError) as caught:
        build_generator(r.model, 3, 32, copies=5)
    text = str(caught.value)
    assert (
        "(faulty-nets 0.1): with width=100000000 the net has 6,400 M parameters (23.8 GiB)" in text
    ), text
    assert "5 copies of its weights, 119.2 GiB in all, is more than the" in text, text
    assert psutil.Process().memory_info().rss - before < 2**30 and time.monotonic() - started < 30


def test_the_command_exits_2_with_one_line(site, packed, tmp_path):
    install(
        site,
        "faulty-nets",
        "0.1",
        {"faulty_nets": NETS},
        "[gan_dist.generators]\nwrong_size = faulty_nets:wrong_size\n",
    )
    settings = {"data.train": packed, "data.image_size": 32, "model.generator.name": "wrong_size"}
    sets = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    result = run_cli("train", "quickstart", *sets, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "generator 'wrong_size' (faulty-nets 0.1)" in errors[0], (
        result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_a_plugin_net_that_exits_during_repair_fails_the_command(site, tmp_path):
    """A folder's repair ended with exit 0 and the files after it never written."""
    import json

    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    from conftest import hole
    from gan_dist.models import spec_for
    from gan_dist.nets import build_generator

    install(
        site, "faulty-nets", "0.1", {"faulty_nets": NETS},
        "[gan_dist.generators]\nexiting_later = faulty_nets:exiting_later\n",
    )  # fmt: skip
    r = recipe("model.generator.name=exiting_later", "model.prefill=none")
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(build_generator(r.model, 3, 32).state_dict(), str(folder / "weights.safetensors"))
    (folder / "spec.json").write_text(json.dumps(spec_for(r, 0, {})))
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "in" / f"{name}.png")
    Image.fromarray(hole(32, 32).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    result = run_cli(
        "repair", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(folder),
        "--mask", str(tmp_path / "mask.png"), "--tile", "32",
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "its net called sys.exit(0) while repairing" in out, out


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_a_plain_pydantic_settings_class_still_refuses_inf_and_nan(site, value):
    """A plugin whose settings are a plain pydantic model took `gain: .inf` (hostile pass)."""
    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    ok = recipe("model.generator.name=faulty_nets:plain_settings", "model.generator.gain=2")
    assert ok.model.generator.settings.gain == 2.0
    with pytest.raises(RecipeError, match="model.generator.gain: Input should be a finite number"):
        recipe("model.generator.name=faulty_nets:plain_settings", f"model.generator.gain={value}")


def test_a_size_divisor_of_any_integer_type_is_taken(site):
    """numpy's int64(2) was refused as not a whole number (hostile pass)."""
    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    r = recipe("model.generator.name=faulty_nets:numpy_divisor")
    from gan_dist.registry import registry

    family = registry("generator").get(r.model.generator.name)
    assert family.divisor(r.model.generator.settings, 32) == 2
