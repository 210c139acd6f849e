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

from gan_dist.config import families
from gan_dist.config.family import PluginError
from gan_dist.config.recipe import load_recipe
from gan_dist.core.errors import RecipeError
from support import PLUGIN, run_cli

NETS = """
import os
import sys
import torch
import torch.nn.functional as F
from pydantic import BaseModel, PositiveInt, field_validator
from torch import nn
from gan_dist.train.losses import Adversarial
from gan_dist.config.family import Family, Settings

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

class Abort(BaseException):
    pass

class BadStr(Exception):
    def __str__(self):
        raise ValueError("not even its message")

class InTraining(nn.Module):
    # a fine net in eval mode, as the contract check before training sees it; in training
    # mode its forward does `how`
    def __init__(self, in_channels, out_channels, how):
        super().__init__()
        self.body = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.how = how

    def forward(self, x):
        out = self.body(x)
        if self.how == "first_only":
            return out[:1]
        if not self.training:
            return out
        if self.how == "raises":
            raise RuntimeError("only in training")
        if self.how == "aborts":
            raise Abort("stop everything")
        if self.how == "bad_str":
            raise BadStr()
        if self.how == "interrupts":
            raise KeyboardInterrupt
        if self.how.startswith("os_exit"):
            os._exit(int(self.how.removeprefix("os_exit") or 0))
        if self.how == "backward_aborts":
            return FailingBackward.apply(out, Abort("in backward"))
        if self.how == "backward_interrupts":
            return FailingBackward.apply(out, KeyboardInterrupt())
        return {
            "tuple": (out, out),
            "float64": out.double(),
            "half": out.half(),
            "detached": out.detach(),
            "leaf": out.detach().requires_grad_(),
            "nan": out * float("nan"),
        }[self.how]

class FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, error):
        ctx.error = error
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise ctx.error

def in_training(how):
    return Family(
        lambda s, in_channels, out_channels, image_size: InTraining(in_channels, out_channels, how),
        Width,
    )

first_only = in_training("first_only")
raises_in_training = in_training("raises")
tuple_in_training = in_training("tuple")
float64_in_training = in_training("float64")
detached_in_training = in_training("detached")
aborts_in_training = in_training("aborts")
interrupts_in_training = in_training("interrupts")
exits_at_once_in_training = in_training("os_exit")
bad_str_in_training = in_training("bad_str")
half_in_training = in_training("half")
leaf_in_training = in_training("leaf")
exits_75_at_once_in_training = in_training("os_exit75")
aborts_in_backward = in_training("backward_aborts")
interrupted_in_backward = in_training("backward_interrupts")
nan_in_training = in_training("nan")

class PatchInTraining(nn.Module):
    def __init__(self, in_channels, how):
        super().__init__()
        self.body = nn.Conv2d(in_channels, 4, 4, 2, 1)
        self.head = nn.Conv2d(4, 1, 3, padding=1)
        self.how = how

    def forward(self, x, features=False):
        hidden = self.body(x)
        logits = self.head(hidden)
        if self.training and self.how == "channels":
            logits = logits.repeat(1, 3, 1, 1)
        if self.training and self.how == "raises":
            raise ValueError("a critic's bad day")
        return (logits, [hidden]) if features else logits

three_logits_in_training = Family(
    lambda s, in_channels, image_size: PatchInTraining(in_channels, "channels"), Width
)
critic_raises_in_training = Family(
    lambda s, in_channels, image_size: PatchInTraining(in_channels, "raises"), Width
)

def terms(**given):
    plain = {"real": lambda x: F.softplus(-x), "fake": F.softplus, "g": lambda x: F.softplus(-x)}
    return Family(lambda s: Adversarial(**(plain | given)))

float_loss = terms(g=lambda x: 0.5)
scalar_loss = terms(real=lambda x: F.softplus(-x).mean())
detached_loss = terms(fake=lambda x: F.softplus(x).detach())
raising_loss = terms(fake=lambda x: 1 / 0)
none_terms = Family(lambda s: Adversarial(None, None, None))

class OwnD(Adversarial):
    def d(self, real_logits, fake_logits, generated=None):
        return 0.5  # a number, not a tensor

own_d = Family(lambda s: OwnD(F.softplus, F.softplus, F.softplus))
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
    # the lookups' caches are keyed on the folder's mtime, which an install in the same
    # clock tick as the last lookup leaves as it was (importlib.invalidate_caches' case)
    families._entry_points_at.cache_clear()
    families._packages_at.cache_clear()


@pytest.fixture()
def site(tmp_path, monkeypatch) -> Path:
    """A folder of installed plugins, on the path of this process and of the commands the
    test starts."""
    from gan_dist.config import families as registry

    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    registry._warn_shadowed.cache_clear()
    yield root
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
    with caplog.at_level(logging.WARNING, logger="gan_dist.config.families"):
        got = load_recipe("quickstart", ["data.image_size=32"])
        load_recipe("quickstart", ["data.image_size=64"])
    assert got.model.generator.settings.base_channels  # the built-in U-Net's settings
    warned = [r.getMessage() for r in caplog.records if "unet" in r.getMessage()]
    assert len(warned) == 1, warned  # once per process, not at every lookup
    assert (
        "the built-in family is used; faulty-unet 2.0 (faulty_unet:fine) also declares" in warned[0]
    )


def test_a_plugin_installed_after_the_first_lookup_is_found_and_its_provider_read_once(
    site, monkeypatch
):
    """A process that was told to install the plugin (a notebook) was refused it until it
    restarted: the entry points were read once per process. And every lookup of a
    `module:attribute` family read every installed package's file list (0.4 s each, several
    a recipe)."""
    with pytest.raises(RecipeError, match="'late' is not a generator"):
        recipe("model.generator.name=late")
    time.sleep(0.05)  # past the file system's clock tick: the install is seen by its mtime
    (site / "late_nets.py").write_text(NETS)
    info = site / "late_nets-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: late-nets\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gan_dist.generators]\nlate = late_nets:fine\n")
    (info / "RECORD").write_text("late_nets.py,,\n")
    assert recipe("model.generator.name=late").model.generator.name == "late"

    reads = []
    real = families.metadata.packages_distributions
    monkeypatch.setattr(
        families.metadata, "packages_distributions", lambda: reads.append(1) or real()
    )
    for _ in range(2):
        got = families.registry("generator").provider("late_nets:fine")
        recipe("model.generator.name=late_nets:fine")
    assert (got.package, got.version) == ("late-nets", "1.0") and len(reads) == 1, reads


def test_a_relative_path_entry_is_read_where_it_points_after_a_chdir(tmp_path, monkeypatch):
    """'' on sys.path (the working folder) was keyed as written: after a chdir into a
    folder of the same mtime (copied with cp -a, unpacked) the lookup kept the old answer
    (hostile pass)."""
    empty, plugins = tmp_path / "empty", tmp_path / "plugins"
    empty.mkdir()
    plugins.mkdir()
    points = "[gan_dist.generators]\nhere = here_nets:fine\n"
    install(plugins, "here-nets", "1.0", {"here_nets": NETS}, points)
    mtime = plugins.stat().st_mtime_ns
    os.utime(empty, ns=(mtime, mtime))
    monkeypatch.syspath_prepend("")
    monkeypatch.chdir(empty)
    with pytest.raises(RecipeError, match="'here' is not a generator"):
        recipe("model.generator.name=here")
    monkeypatch.chdir(plugins)
    try:
        assert recipe("model.generator.name=here").model.generator.name == "here"
    finally:
        sys.modules.pop("here_nets", None)


# --- finding 8: plugin code that ends the process ---


@pytest.mark.integration
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
    from gan_dist.nets.build import build_generator

    with pytest.raises(
        PluginError, match=r"\(faulty-nets 0.1\): its builder failed \(called sys.exit\(0\)\)"
    ):
        build_generator(r.model, 3, 32)


@pytest.mark.integration
def test_a_plugin_that_exits_during_training_fails_the_run(site, packed, tmp_path):
    from support import tiny

    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    plugin = {"model.generator.name": "faulty_nets:exiting_forward"}
    settings = tiny(packed, 3, **plugin, **{"model.generator.base_channels": None})
    result = run_cli("train", "quickstart", *settings, "--run-dir", str(tmp_path / "run"))
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert (
        "generator 'faulty_nets:exiting_forward' (faulty-nets 0.1): its net's forward failed "
        "(called sys.exit(0)) at "
    ) in out and "faulty_nets.py:" in out, out
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
    # finding 2: checked on one image, a net that ignored the batch passed and trained,
    # RepairNet's compositing broadcasting its one image over the batch
    "first_only": (
        r"its net returned \(1,3,32,32\) for \(2,4,32,32\); a generator must return "
        r"\(2,3,32,32\)"
    ),
}


@pytest.mark.parametrize("family", CONTRACT)
def test_a_generator_that_breaks_the_contract_is_one_line_naming_it(site, family):
    from gan_dist.nets.build import build_generator

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
    from gan_dist.nets.build import build_discriminator

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

    from gan_dist.nets.build import build_generator

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


@pytest.mark.integration
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

    from gan_dist.nets.build import build_generator
    from gan_dist.repair.model_file import spec_for
    from support import hole

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
    assert (
        f"{folder}: generator 'exiting_later' (faulty-nets 0.1): its net's forward failed "
        "(called sys.exit(0)) at "
    ) in out, out
    assert f", while repairing {tmp_path / 'in' / 'b.png'}; no file after it was repaired" in out


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
    from gan_dist.config.families import registry

    family = registry("generator").get(r.model.generator.name)
    assert family.divisor(r.model.generator.settings, 32) == 2


# --- findings 8 and 13, again: faults that show only in training, at any call ---


def _generator(site, family: str):
    from gan_dist.nets.build import build_generator

    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    model = recipe(f"model.generator.name=faulty_nets:{family}", "model.prefill=none").model
    return build_generator(model, 3, 32)


def _batch(n: int = 4):
    import torch

    mask = torch.zeros(n, 1, 32, 32)
    mask[..., 8:16, 8:16] = 1
    return torch.rand(n, 3, 32, 32) * 2 - 1, mask


IN_TRAINING = {
    "raises_in_training": (
        r"its net's forward failed \(RuntimeError: only in training\) at .*faulty_nets\.py:\d+"
    ),
    "tuple_in_training": (
        r"its net returned a tuple of 2: \(N,3,32,32\), \(N,3,32,32\) for \(N,4,32,32\); a "
        r"generator must return \(N,3,32,32\)"
    ),
    "float64_in_training": r"its net returned float64 for float32 input; a generator returns",
    "detached_in_training": r"in training its net returned a tensor without gradients",
    "aborts_in_training": r"its net's forward failed \(Abort: stop everything\) at .*faulty_nets",
    # hostile pass 2: a message that cannot be read, half precision nobody asked for, and a
    # result that asks for a gradient but is not made from the weights
    "bad_str_in_training": r"forward failed \(BadStr: \(its message could not be read\)\)",
    "half_in_training": r"its net returned float16 for float32 input; a generator returns its",
    "leaf_in_training": r"in training its net returned a tensor without gradients",
}


@pytest.mark.parametrize("family", IN_TRAINING)
def test_every_call_of_a_plugin_generator_is_held_to_the_contract(site, family):
    """Checked once in eval mode, these nets passed and failed in training: a traceback deep
    in the trainer, exit 1 (or status.json left `running`, for the BaseException)."""
    G = _generator(site, family).train()  # built: the check before training passed
    with pytest.raises(PluginError) as caught:
        G(*_batch())
    text = str(caught.value)
    assert f"generator 'faulty_nets:{family}' (faulty-nets 0.1): " in text, text
    assert __import__("re").search(IN_TRAINING[family], text), text
    assert "\n" not in text


def test_the_checks_keep_names_copies_and_built_in_nets_as_they_were(site):
    import copy

    import torch

    from gan_dist.nets.build import build_generator

    G = _generator(site, "raises_in_training").eval()
    assert list(G.state_dict()) == ["body.body.weight", "body.body.bias"]  # checkpoints' names
    ema = copy.deepcopy(G)  # as the EMA copies it: the copy checks, and runs, its own weights
    with torch.no_grad():
        ema.body.body.weight.zero_()
        ema.body.body.bias.fill_(0.5)
        damaged, mask = _batch()
        assert torch.equal(ema(damaged, mask), mask * 0.5 + (1 - mask) * damaged)
        assert not torch.equal(G(damaged, mask), ema(damaged, mask))
    with pytest.raises(PluginError, match="only in training"):
        ema.train()(damaged, mask)
    unet = build_generator(recipe().model, 3, 32)
    assert all("forward" not in m.__dict__ for m in unet.modules())  # built-ins: no wrapper


def test_a_plugin_discriminator_is_checked_at_every_call(site):
    import torch

    from gan_dist.nets.build import build_discriminator

    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    cfg = recipe("model.discriminator.name=faulty_nets:three_logits_in_training")
    D = build_discriminator(cfg.model.discriminator, 3, 32).train()
    with pytest.raises(PluginError) as caught:
        D(torch.zeros(6, 7, 32, 32), features=True)
    assert (
        "discriminator 'faulty_nets:three_logits_in_training' (faulty-nets 0.1): called with "
        "features=True on (N,7,32,32), its net returned a tuple of 2: (N,3,16,16), a list of "
        "1: (N,4,16,16); a discriminator must return (logits, a list of feature tensors with a "
        "row per image): floating-point logits shaped (N,1,h,w)"
    ) in str(caught.value), str(caught.value)


OBJECTIVES = {
    "float_loss": (
        r"its g returned float for logits shaped \(4,1,3,3\); real, fake and g must return a "
        r"floating-point tensor of the logits' shape"
    ),
    "scalar_loss": r"its real returned \(\) of float32 for logits shaped \(4,1,3,3\)",
    "detached_loss": r"its fake returned a tensor without gradients for logits that have them",
    "raising_loss": r"its fake failed \(ZeroDivisionError: division by zero\) at .*faulty_nets",
    "none_terms": r"its Adversarial's real is NoneType, not a function of the logits",
    "own_d": r"its d returned float; d must return a floating-point scalar tensor",
}


@pytest.mark.parametrize("family", OBJECTIVES)
def test_a_plugin_objective_is_checked_at_every_call(site, family):
    import torch

    from gan_dist.train.losses import _adversarial

    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    _adversarial.cache_clear()
    logits = torch.randn(4, 1, 3, 3, requires_grad=True)
    with pytest.raises(PluginError) as caught:
        adversarial = _adversarial(f"faulty_nets:{family}", "{}")
        adversarial.d(logits, logits * 2)
        adversarial.g(logits)
    text = str(caught.value)
    assert f"objective 'faulty_nets:{family}' (faulty-nets 0.1): " in text, text
    assert __import__("re").search(OBJECTIVES[family], text), text


def test_ctrl_c_stays_ctrl_c_and_stops_are_not_blamed_on_the_plugin(site):
    """Where Python's SIGINT handler runs (repair), a KeyboardInterrupt is the user's Ctrl-C;
    where a StopFlag holds Ctrl-C (training) it only sets the flag, so one is the code's."""
    from gan_dist.run.signals import StopFlag, StopRequested, Terminated

    G = _generator(site, "interrupts_in_training").train()
    with pytest.raises(KeyboardInterrupt):
        G(*_batch())
    with StopFlag(), pytest.raises(PluginError, match=r"forward failed \(KeyboardInterrupt\)"):
        G(*_batch())

    from gan_dist.config.family import Family

    for stop in (StopRequested("SIGTERM"), Terminated(143)):

        def stopped(stop=stop):
            raise stop

        with StopFlag(), pytest.raises(type(stop)):
            Family(stopped, label="generator 'x' (x 1)", plugin=True).run("its forward", stopped)


def _trains(packed, run_dir: Path, *command: str, **settings: object):
    from support import tiny

    dropped = {"model.generator.base_channels": None, "model.discriminator.base_channels": None}
    untracked = {"tracking.enabled": "false"}  # MLflow is not what these tests are about
    args = tiny(packed, 2, **dropped, **(untracked | settings))
    return run_cli(*command, "quickstart", *args, "--run-dir", str(run_dir))


TRAINING = [
    ("model.generator.name", family, IN_TRAINING[family])
    for family in ("raises_in_training", "tuple_in_training", "float64_in_training")
] + [
    ("model.generator.name", "aborts_in_training", r"forward failed \(Abort: stop everything\)"),
    ("model.generator.name", "interrupts_in_training", r"forward failed \(KeyboardInterrupt\)"),
    (
        "model.discriminator.name",
        "three_logits_in_training",
        r"called with features=True on \(N,7,32,32\), its net returned a tuple of 2: \(N,3,",
    ),
    ("model.discriminator.name", "critic_raises_in_training", r"ValueError: a critic's bad day"),
    ("objective.adversarial", "float_loss", OBJECTIVES["float_loss"].replace("4,1,3,3", ".*")),
    ("objective.adversarial", "none_terms", OBJECTIVES["none_terms"]),
    ("objective.adversarial", "raising_loss", OBJECTIVES["raising_loss"]),
]


@pytest.mark.integration
@pytest.mark.parametrize(("key", "family", "message"), TRAINING, ids=[t[1] for t in TRAINING])
def test_a_fault_that_shows_only_in_training_fails_the_run_naming_the_plugin(
    site, packed, tmp_path, key, family, message
):
    """A traceback and exit 1, or (BaseException, KeyboardInterrupt) status.json left
    `running`; now one line naming the family and its package, exit 2, status `failed`."""
    import json
    import re

    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    result = _trains(packed, tmp_path / "run", "train", **{key: f"faulty_nets:{family}"})
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    kind = key.split(".")[-1].replace("name", key.split(".")[1]).replace("adversarial", "objective")
    assert len(errors) == 1 and f"{kind} 'faulty_nets:{family}' (faulty-nets 0.1): " in errors[0]
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in result.stderr, result.stderr
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert (status["status"], status["cause"]) == ("failed", "user"), status


@pytest.mark.integration
def test_a_non_finite_loss_names_the_plugin_code_it_ran(site, packed, tmp_path):
    """Hostile pass 2: a plugin net whose output is NaN stopped the run with advice on the
    learning rate and precision only; the plugin, the likelier cause, was not named."""
    from gan_dist.run.signals import EXIT_NONFINITE

    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    plugin = {"model.generator.name": "faulty_nets:nan_in_training"}
    result = _trains(packed, tmp_path / "run", "train", **plugin)
    assert result.returncode == EXIT_NONFINITE, result.stdout + result.stderr
    assert "non-finite loss at step 1" in result.stderr, result.stderr
    assert (
        "or check the plugin code it ran: generator 'faulty_nets:nan_in_training' "
        "(faulty-nets 0.1)."
    ) in result.stderr, result.stderr


@pytest.mark.integration
def test_a_fault_under_torch_compile_is_caught_alike(site, packed, tmp_path):
    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    plugin = {"model.generator.name": "faulty_nets:raises_in_training", "train.compile": "true"}
    result = _trains(packed, tmp_path / "run", "train", **plugin)
    assert result.returncode == 2, result.stdout + result.stderr
    assert IN_TRAINING["raises_in_training"].split(r" at ")[0].replace("\\", "") in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    ("family", "code", "error"),
    [
        ("aborts_in_backward", 1, r"faulty_nets\.py:\d+ raised Abort: in backward during "),
        (
            "interrupted_in_backward",
            None,
            r"interrupted: KeyboardInterrupt raised at .*faulty_nets",
        ),
    ],
    ids=["BaseException", "KeyboardInterrupt"],
)
def test_a_base_exception_outside_the_checked_calls_still_fails_the_run(
    site, packed, tmp_path, family, code, error
):
    """A plugin's own autograd backward runs outside its forward: a BaseException from it
    left status.json `running`. Now `failed`; a KeyboardInterrupt (code's, Ctrl-C being a
    flag here) is raised on as it is, anything else is one line, exit 1."""
    import json
    import re

    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    plugin = {"model.generator.name": f"faulty_nets:{family}"}
    result = _trains(packed, tmp_path / "run", "train", **plugin)
    assert result.returncode != 0 and code in (None, result.returncode), result.stderr
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert (status["status"], status["cause"]) == ("failed", "crash"), status
    assert re.search(error, status["error"]), status
    if code is not None:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and re.search(error, errors[0]), result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(("code", "family"), [(0, "exits_at"), (75, "exits_75_at")])
def test_a_trainer_that_ends_itself_fails_the_launch(site, packed, tmp_path, code, family):
    """os._exit cannot be caught in the trainer: `gan-dist launch` said nothing and exited 0
    with status.json at `running`; with os._exit(75) it said "preempted: checkpoint written"
    with no checkpoint, and a wrapper that runs it again on 75 would loop (hostile pass 2).
    The launcher reads the status and says what happened."""
    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    plugin = {"model.generator.name": f"faulty_nets:{family}_once_in_training"}
    run_dir = tmp_path / "run"
    result = _trains(packed, run_dir, "launch", "--local", "--cpu-procs", "1", **plugin)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"error: the trainer exited {code} but its {run_dir / 'status.json'} says running at "
        "step 0: something in the process ended it without finishing (a call of os._exit"
    ) in result.stderr, result.stderr
    assert "preempted" not in result.stderr


@pytest.mark.integration
def test_a_slurm_job_whose_trainer_ends_itself_with_exit_0_says_so(slurm, site, packed, tmp_path):
    """The SLURM script read srun's exit 0 with status.json at `running` as "training failed
    (srun exit 0); the lines above name the failed rank", and none had failed."""
    import sys

    from support import tiny

    install(site, "faulty-nets", "0.1", {"faulty_nets": NETS}, "")
    settings = {
        "model.generator.name": "faulty_nets:exits_at_once_in_training",
        "model.generator.base_channels": None,
        "tracking.enabled": "false",
    }
    launch = [sys.executable, "-m", "gan_dist", "launch", "quickstart", "--slurm"]
    args = ["--cpu-procs", "1", *tiny(packed, 2, **settings), "--run-dir", str(tmp_path / "run")]
    result = slurm.run("salloc", "--nodes=1", "--cpus-per-task=2", *launch, *args, timeout=240)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert (
        "gan-dist: the trainer exited 0 but its status.json says running: something in the "
        "process ended it without finishing (a call of os._exit)"
    ) in out, out
    assert "name the failed rank" not in out
    assert (
        "the trainer ended without finishing at step 0: a rank died without reporting, or " in out
    )


@pytest.mark.integration
def test_a_plugin_that_keeps_the_contract_trains_under_ddp(site, packed, tmp_path):
    """The checks hold every call but change nothing: two gloo ranks train the test plugin's
    families (tests/fixtures/plugin), compiled, to the end."""
    import json

    toy = (PLUGIN / "gan_dist_toy" / "__init__.py").read_text()
    install(site, "toy-copy", "0.1", {"toy_copy": toy}, "")
    families = {
        "model.generator.name": "toy_copy:generator",
        "model.discriminator.name": "toy_copy:discriminator",
        "objective.adversarial": "toy_copy:smooth_bce",
        "train.compile": "true",
    }
    run_dir = tmp_path / "run"
    result = _trains(packed, run_dir, "launch", "--local", "--cpu-procs", "2", **families)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
