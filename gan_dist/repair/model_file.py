"""Repair models as files, and in the MLflow model registry.

A repair model is two files: `weights.safetensors` (the EMA generator) and `spec.json` (the
model section of the recipe, and the input/output contract: channels, value range, mask
convention, tile size). Loading reads only those two, JSON and safetensors, so a tampered
registry or checkpoint cannot run code in `gan-dist repair`.

In the registry the two files are the artifacts of an MLflow pyfunc model, so MLflow's own
tools (`mlflow.pyfunc.load_model(uri).predict(...)`, `mlflow models serve`) work too,
through `pyfunc.py`, a thin wrapper over the same loader. (Any pyfunc load runs that
wrapper's code, as MLflow does for every pyfunc model; `gan-dist` itself never does.)
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, ValidationError

from gan_dist.config.family import shown as _shown
from gan_dist.config.recipe import SAVED, DamageStep, ModelConfig
from gan_dist.core.errors import GanDistError
from gan_dist.repair.registered import registered_version, what_is_registered
from gan_dist.train.finetune import InitialWeights

if TYPE_CHECKING:
    import torch

    from gan_dist.config.recipe import Recipe

log = logging.getLogger("gan_dist.repair.model_file")

SPEC_FORMAT = "gan-dist-repair-model"
WEIGHTS, SPEC = "weights.safetensors", "spec.json"
ARTIFACT_NAME = "repair-model"  # the model's name inside its MLflow run


class ModelSpec(BaseModel):
    """spec.json: what `spec_for` writes. Unknown keys are kept (a newer gan-dist may add
    some); every key this version reads is required and typed."""

    model_config = ConfigDict(extra="allow")

    format: Literal["gan-dist-repair-model"]
    format_version: PositiveInt
    recipe_name: str
    model: ModelConfig
    channels: Literal[1, 3]
    train_image_size: PositiveInt
    damage: list[DamageStep]
    tile_size: PositiveInt
    step: NonNegativeInt
    metrics: dict[str, float]


@dataclass
class RepairModel:
    """A generator ready for inference, and what it expects."""

    net: torch.nn.Module
    spec: dict[str, Any]
    source: str
    precision: str = "fp32"  # "fp32", "bf16", or "auto" (see `precision_for`)

    def use_precision(self, precision: str) -> RepairModel:
        """ "fp32"; "bf16": bf16 autocast with channels_last net and inputs (the layout oneDNN
        and cuDNN run bf16 convolutions in); "auto": `precision_for` decides per image.
        Known pixels stay bit-exact either way: repair copies them from the input."""
        self.precision = precision
        return self

    def precision_for(self, dtype: Any) -> str:
        """The precision an image of this dtype is repaired in. "auto" is bf16 for 8-bit
        images where the device runs bf16 natively, else fp32: bf16 keeps 8 significant bits,
        within 1/255 of fp32 for 8-bit output but coarser than a 16-bit scan's levels."""
        import numpy as np

        from gan_dist.core.precision import inference_precision

        if self.precision != "auto":
            return self.precision
        if np.dtype(dtype).itemsize > 1:
            return "fp32"
        return inference_precision("auto", next(self.net.parameters()).device.type)

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        precision: str = "fp32",
        starts: torch.Tensor | None = None,
        origins: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] with holes -1, masks (B, 1, H, W) with 1 in the
        holes -> the net's output (B, C, H, W) in [-1, 1], fp32, on the net's device.
        `starts`: the holes' prefill (B, C, H, W) when the caller solved it (tiled repair);
        None: the net fills them itself. `origins` (B, 2) int: the tiles' top-left corners
        (px) in the whole image, which position-drawn noise (`model.noise`) depends on."""
        import torch

        device = next(self.net.parameters()).device
        bf16 = precision == "bf16"
        fmt = torch.channels_last if bf16 else torch.contiguous_format
        self.net.to(memory_format=fmt)  # a no-op when the weights are in that layout
        images, masks = (t.to(device, memory_format=fmt) for t in (images, masks))
        if starts is not None:
            starts = starts.to(device, memory_format=fmt)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.net(images, masks, starts, origins).float()

    def prefill_only(self) -> RepairModel | None:
        """This model with its generator taken out: its classical prefill alone (see
        `nets.prefill_only`), on the same device; None when it has no prefill."""
        from gan_dist.nets.repair_net import prefill_only

        model = self.spec["model"]
        if model.get("prefill", "none") == "none":
            return None
        device = next(self.net.parameters()).device
        net = prefill_only(model["prefill"], bool(model["composite"]), self.channels).to(device)
        return RepairModel(net, self.spec, f"{self.source} (its prefill alone)", self.precision)

    @property
    def channels(self) -> int:
        return int(self.spec["channels"])

    @property
    def size_divisor(self) -> int:
        """Every input side must be a multiple of this (px): what the generator's family
        declares, e.g. 2**down-samplings for its skip connections to line up."""
        from gan_dist.config.families import registry
        from gan_dist.config.recipe import SAVED, ModelConfig

        gen = ModelConfig.model_validate(self.spec["model"], context=SAVED).generator
        family = registry("generator").get(gen.name, saved=True)
        return family.divisor(gen.settings, int(self.spec["train_image_size"]))


def spec_for(recipe: Recipe, step: int, metrics: dict[str, float]) -> dict[str, Any]:
    data = recipe.data
    return {
        "format": SPEC_FORMAT,
        "format_version": 1,
        "recipe_name": recipe.name,
        "model": recipe.model.model_dump(mode="json"),
        "channels": data.channels,
        "train_image_size": data.image_size,
        "damage": [step.model_dump(mode="json") for step in data.damage],
        "input": "image scaled to [-1, 1]; pixels inside the mask are ignored",
        "output": "repaired image in [-1, 1], same size",
        "value_range": [-1.0, 1.0],
        "mask": "1 channel, 1 (white) = pixel to repair, 0 = keep"
        if recipe.model.composite
        else "none: every pixel is restored",
        "tile_size": max(256, data.image_size),
        "step": step,
        "metrics": metrics,
        "families": families_of(recipe),
    }


def families_of(recipe: Recipe) -> dict[str, dict[str, str | None]]:
    """Which package (and version) provided each family the recipe names, so that a model
    can say what to install where its nets are missing: {kind: {name, package, version}}."""
    from gan_dist.config.families import registry

    named = {
        "generator": recipe.model.generator.name,
        "discriminator": recipe.model.discriminator.name,
        "objective": recipe.objective.adversarial,
    }
    sources = {}
    for kind, name in named.items():
        provider = registry(kind).provider(name)
        sources[kind] = {"name": name, "package": provider.package, "version": provider.version}
    return sources


def _check_families(raw: dict[str, Any], source: str) -> None:
    """A spec naming a family that cannot be had here: say which package provided it, and
    whether another version of that package is what is installed. Names are looked up as
    a saved model's (`Registry.get(saved=True)`): no module a spec names is imported."""
    from gan_dist.config.families import registry
    from gan_dist.config.family import Provider, UnknownFamily, installed_version

    for kind, entry in _families(raw):
        try:
            registry(kind).get(entry["name"], saved=True)
        except UnknownFamily as exc:
            if ":" in entry["name"]:  # a module reference: refused, whatever is installed
                raise GanDistError(f"{source}: its {kind} {exc}") from None
            provider = Provider(entry.get("package"), entry.get("version"))
            if not provider.valid:
                raise GanDistError(
                    f"{source}: its {kind} {_shown(entry['name'])} is not available here, and "
                    f"the model names an invalid package for it: {provider.install_hint()}"
                ) from None
            installed = installed_version(provider.package)
            if installed is None:
                where = f"comes from {provider}, which is not installed here"
                if provider.package is None:
                    where = "comes from a module"
                raise GanDistError(
                    f"{source}: its {kind} {_shown(entry['name'])} {where}: "
                    f"{provider.install_hint()}"
                ) from None
            raise GanDistError(
                f"{source}: its {kind} {_shown(entry['name'])} comes from {provider}; "
                f"{provider.package} {installed} is installed here but does not provide it "
                f"({exc}): {provider.install_hint()}"
            ) from None


def _version_drift(spec: dict[str, Any]) -> list[str]:
    """Families installed here at another version than the model was trained with."""
    from gan_dist.config.family import Provider, installed_version

    notes = []
    for kind, entry in _families(spec):
        provider = Provider(entry.get("package"), entry.get("version"))
        if not (provider.valid and provider.package and provider.version):
            continue
        installed = installed_version(provider.package)
        if installed and installed != provider.version:
            notes.append(
                f"its {kind} {_shown(entry['name'])} was trained with {provider}, and "
                f"{provider.package} {installed} is installed here ({provider.install_hint()} "
                "gives the trained one)"
            )
    return notes


def _families(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, {name, package, version}) of the nets a spec records; older specs have none."""
    families = raw.get("families")
    if not isinstance(families, dict):
        return []
    return [
        (kind, entry)
        for kind in ("generator", "discriminator")
        if isinstance(entry := families.get(kind), dict) and isinstance(entry.get("name"), str)
    ]


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def saved_recipe(ckpt: Any) -> Recipe:
    """A checkpoint's recipe, read as a saved one (`SAVED`: no module it names is imported).
    Raises GanDistError (exit 1: a model that cannot be loaded, not a recipe typo) naming
    state.json and each problem, e.g. a plugin family that is not installed here."""
    from gan_dist.config.recipe import validate_recipe
    from gan_dist.core.errors import RecipeError

    where = ckpt.path / "state.json"
    if not isinstance(ckpt.state.get("recipe"), dict):
        raise GanDistError(f"{where}: no recipe in it; not a gan-dist checkpoint, or damaged")
    try:
        return validate_recipe(ckpt.state["recipe"], str(where), SAVED)
    except RecipeError as exc:
        raise GanDistError(str(exc)) from None


def export_checkpoint(ckpt_path: Path, folder: Path) -> dict[str, Any]:
    """Write the EMA generator of a checkpoint as a repair model (weights + spec)."""
    from safetensors.torch import load_file, save_file

    from gan_dist.run import checkpoint

    ckpt = checkpoint.read(ckpt_path)
    recipe = saved_recipe(ckpt)
    spec = spec_for(recipe, ckpt.step, ckpt.state.get("metrics") or {})
    folder.mkdir(parents=True, exist_ok=True)
    saved = load_file(str(ckpt.path / "ema.safetensors"))
    weights = checkpoint.without_compiled_names(saved)
    if weights.keys() == saved.keys():
        shutil.copyfile(ckpt.path / "ema.safetensors", folder / WEIGHTS)
    else:  # a compiled run's names, from an older gan-dist: the model holds the net's own
        save_file(weights, str(folder / WEIGHTS))
    (folder / SPEC).write_text(json.dumps(spec, indent=2))
    return spec


def load_files(folder: Path, source: str, device: str = "cpu") -> RepairModel:
    """The safe loader: JSON and safetensors only, every failure a GanDistError. The spec is
    validated by a typed schema, and the weights are checked finite and of the shapes the
    spec's net has (on torch's meta device, allocating nothing) before the net is built."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from gan_dist.nets.build import build_generator
    from gan_dist.run.checkpoint import without_compiled_names

    spec = read_spec(folder / SPEC, source)
    drift = _version_drift(spec)
    because = f"; {'; '.join(drift)}" if drift else ""
    try:
        state = without_compiled_names(load_file(str(folder / WEIGHTS), device="cpu"))
    except (OSError, SafetensorError) as exc:
        raise GanDistError(
            f"{source}: {WEIGHTS} is not a valid safetensors file ({exc}); refusing to load it. "
            "Weights are never unpickled: re-register the model from its run."
        ) from None
    broken = [k for k, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
    if broken:
        raise GanDistError(
            f"{source}: {WEIGHTS} holds NaN or infinite values ({len(broken)} tensors, first "
            f"{broken[0]}); the run diverged or the file is damaged: register another version"
        )
    model = ModelConfig.model_validate(spec["model"], context=SAVED)
    size = int(spec["train_image_size"])
    try:
        with torch.device("meta"):
            shapes = build_generator(model, int(spec["channels"]), size).state_dict()
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise GanDistError(
            f"{source}: {SPEC} describes a net that cannot be built ({exc}){because}"
        ) from None
    wrong = sorted(
        set(shapes) ^ set(state)
        | {
            k
            for k in set(shapes) & set(state)
            if shapes[k].shape != state[k].shape
            or shapes[k].is_floating_point() != state[k].is_floating_point()
        }
    )
    if wrong:
        raise GanDistError(
            f"{source}: weights do not fit the spec's model ({len(wrong)} tensors differ in "
            f"shape or type, first {wrong[0]})"
            + (because or "; the two files are from different models")
        )
    for note in drift:  # it loads, but may not behave as it was trained to
        log.warning("%s: %s", source, note)
    net = build_generator(model, int(spec["channels"]), size)
    net.load_state_dict(state)
    return RepairModel(net.to(device).eval().requires_grad_(False), spec, source)


def read_spec(path: Path, source: str) -> dict[str, Any]:
    """spec.json validated by ModelSpec (bounded in size and nesting); the validated values
    as a dict. Raises GanDistError naming the first problems, e.g. `spec.json: tile_size:
    Input should be greater than 0`."""
    from gan_dist.core.textfiles import UntrustedTextError, check_bounded, read_text_file

    try:
        raw = json.loads(read_text_file(path, "a model spec"))
        check_bounded(raw, f"{source}: {SPEC}")
    except (OSError, ValueError, RecursionError) as exc:
        raise GanDistError(f"{source}: no readable {SPEC} ({exc}); not a gan-dist model") from None
    except UntrustedTextError as exc:
        raise GanDistError(str(exc)) from None
    if not isinstance(raw, dict) or raw.get("format") != SPEC_FORMAT:
        raise GanDistError(f"{source}: {SPEC} is not a gan-dist repair model spec")
    families = raw.get("families", {})
    if not isinstance(families, dict) or any(
        not (isinstance(families[kind], dict) and isinstance(families[kind].get("name"), str))
        for kind in ("generator", "discriminator")
        if kind in families
    ):
        raise GanDistError(
            f"{source}: {SPEC}: its families are not records of nets (name, package, version); "
            "the file was altered or damaged: get the model from its source again"
        )
    _check_families(raw, source)
    try:
        spec = ModelSpec.model_validate(raw, context=SAVED).model_dump(mode="json")
    except ValidationError as exc:
        raise GanDistError(f"{source}: {SPEC}: {_problems(exc)}") from None
    for kind, entry in _families(spec):  # which one would the net be?
        if entry["name"] != spec["model"][kind]["name"]:
            raise GanDistError(
                f"{source}: {SPEC} is inconsistent: families.{kind} names "
                f"{_shown(entry['name'])}, model.{kind} {_shown(spec['model'][kind]['name'])}; "
                "the file was altered or damaged: get the model from its source again"
            )
    return spec


def _problems(exc: ValidationError) -> str:
    """The first three problems of a validation error, as `dotted.path: message (got ...)`,
    worded as a recipe's (a family's own problems under its section)."""
    from gan_dist.config.recipe import problem_lines

    return "; ".join(problem_lines(exc)[:3])


def load_model(uri: str, device: str = "cpu", tracking_uri: str | None = None) -> RepairModel:
    """`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN_ID/repair-model`, or a local run
    directory (its newest usable checkpoint), checkpoint directory or model folder."""
    if uri.startswith(("models:/", "runs:/")):
        import mlflow

        from gan_dist.tracking.stores import open_store
        from gan_dist.tracking.stores import tracking_uri as default_uri

        store = tracking_uri or default_uri()
        open_store(store, create=False)  # reading a model never creates a store
        mlflow.set_tracking_uri(store)
        with tempfile.TemporaryDirectory(prefix="gan-dist-model-") as tmp:
            return load_files(_download(uri, Path(tmp)), uri, device)
    path = Path(uri)
    if (path / SPEC).is_file():
        return load_files(path, uri, device)
    ckpt = checkpoint_of(path)
    with tempfile.TemporaryDirectory(prefix="gan-dist-model-") as tmp:
        export_checkpoint(ckpt, Path(tmp))
        return load_files(Path(tmp), f"{ckpt}", device)


def initial_weights(source: str, tracking_uri: str | None = None) -> InitialWeights:
    """The weights `model.init` names: `models:/NAME@ALIAS`, `models:/NAME/VERSION` (a
    registered generator; the alias is resolved to its version, the lineage recorded),
    `runs:/RUN_ID/repair-model`, a model folder, or a run or checkpoint directory (generator and
    discriminator). Loaded as data (safetensors, checked like `load_model`), never
    unpickled. Raises GanDistError for a source that cannot be found or read."""
    try:
        return _initial_weights(source, tracking_uri)
    except GanDistError as exc:  # every error names the setting it came from
        text = str(exc)
        raise GanDistError(
            text if text.startswith("model.init") else f"model.init: {text}"
        ) from None


def _initial_weights(source: str, tracking_uri: str | None) -> InitialWeights:
    parent = registered_version(source, tracking_uri) if source.startswith("models:/") else None
    model = load_model(parent or source, "cpu", tracking_uri)
    discriminator, settings = None, model.spec["model"]
    local = not source.startswith(("models:/", "runs:/"))
    if local:
        source = str(Path(source).resolve())  # lineage that holds from any directory
    if local and not (Path(source) / SPEC).is_file():
        from gan_dist.run import checkpoint

        ckpt = checkpoint.read(checkpoint_of(Path(source)))
        discriminator = checkpoint.load_weights(ckpt.path, "discriminator")
        settings = ckpt.state["recipe"]["model"]
        run = ckpt.state.get("tracking_run_id")
        parent = f"runs:/{run}" if run else None  # the run the checkpoint was tracked in
    return InitialWeights(
        source,
        {k: v.clone() for k, v in model.net.state_dict().items()},
        discriminator,
        settings,
        model.channels,
        int(model.spec["train_image_size"]),
        parent,
    )


def checkpoint_of(path: Path) -> Path:
    from gan_dist.run import checkpoint

    if (path / "state.json").is_file():
        return path
    if path.is_dir():
        found = checkpoint.resolve(path, "auto")
        if found is not None:
            return found.path
        raise GanDistError(f"{path}: no usable checkpoint in this run directory")
    raise GanDistError(
        f"{path}: not found; give models:/NAME@ALIAS, models:/NAME/VERSION, "
        f"runs:/RUN_ID/{ARTIFACT_NAME}, or a run, checkpoint or model directory"
    )


def _download(uri: str, dst: Path) -> Path:
    """Fetch a registered model's files; return the folder holding spec.json."""
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    try:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:
        where = mlflow.get_tracking_uri()
        hint = (
            f"; a run's model is runs:/RUN_ID/{ARTIFACT_NAME}" if uri.startswith("runs:/") else ""
        )
        found = what_is_registered(uri) if uri.startswith("models:/") else None
        raise GanDistError(f"{uri}: {found or exc.message} (tracking URI {where}){hint}") from None
    if (root / SPEC).is_file():
        return root
    try:
        flavor = yaml.safe_load((root / "MLmodel").read_text())["flavors"]["python_function"]
        spec = (root / flavor["artifacts"]["spec"]["path"]).resolve()
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise GanDistError(f"{uri}: not a gan-dist repair model (no {SPEC})") from None
    if not spec.is_relative_to(root.resolve()):  # an MLmodel may name any path
        raise GanDistError(f"{uri}: its MLmodel points outside the model's files; refusing it")
    if (spec.parent / WEIGHTS).is_file():
        return spec.parent
    raise GanDistError(f"{uri}: the model's {WEIGHTS} is missing")
