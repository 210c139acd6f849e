"""Repair models as files, and in the MLflow model registry.

A repair model is two files: `weights.safetensors` (the EMA generator) and `spec.json` (the
model section of the recipe, and the input/output contract: channels, value range, mask
convention, tile size). Loading reads only those two, JSON and safetensors, so a tampered
registry or checkpoint cannot run code in `gan-dist repair`.

In the registry the two files are the artifacts of an MLflow pyfunc model, so MLflow's own
tools (`mlflow.pyfunc.load_model(uri).predict(...)`, `mlflow models serve`) work too,
through `mlflow_model.py`, a thin wrapper over the same loader. (Any pyfunc load runs that
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

if TYPE_CHECKING:
    import torch

    from gan_dist.config.recipe import Recipe

log = logging.getLogger("gan_dist.models")

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


def _file_sha256(path: Path) -> str:
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
    ckpt = _checkpoint_of(path)
    with tempfile.TemporaryDirectory(prefix="gan-dist-model-") as tmp:
        export_checkpoint(ckpt, Path(tmp))
        return load_files(Path(tmp), f"{ckpt}", device)


@dataclass
class InitialWeights:
    """Where a fine-tuning run starts (`model.init`): the source's generator weights (EMA,
    as registered), its discriminator's when the source is a run or checkpoint, the
    source's model settings and channels to check against the recipe, and its lineage."""

    source: str
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor] | None
    model: dict[str, Any]  # the source's `model` section, as spec.json holds it
    channels: int
    image_size: int  # px, the source's training crops
    parent: str | None  # models:/NAME/VERSION when the source is a registered version

    @property
    def tags(self) -> dict[str, str]:
        """The lineage, as run and model-version tags."""
        return {"init": self.source} | ({"parent": self.parent} if self.parent else {})

    def check_generator(self, model: ModelConfig, channels: int) -> None:
        """Raises GanDistError naming each generator setting (and the channels) in which the
        recipe differs from the source: weights only load into the same net."""
        from gan_dist.tracking.tracker import flatten

        ours = {
            "channels": str(channels),
            "noise": str(model.noise),
            **flatten(model.generator.model_dump(mode="json")),
        }
        theirs = {
            "channels": str(self.channels),
            "noise": str(self.model.get("noise", False)),
            **flatten(self.model["generator"]),
        }
        differ = [
            f"{key} {theirs.get(key)} (recipe: {ours.get(key)})"
            for key in sorted(set(ours) | set(theirs))
            if ours.get(key) != theirs.get(key)
        ]
        if differ:
            raise GanDistError(
                f"model.init {self.source}: its generator differs from the recipe's in "
                f"{', '.join(differ)}; set model.generator, model.noise and data.channels to "
                "match it"
            )

    def discriminator_fits(self, model: ModelConfig) -> bool:
        """Whether the source has a discriminator of the recipe's family and settings."""
        ours = model.discriminator.model_dump(mode="json")
        return self.discriminator is not None and self.model.get("discriminator") == ours


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
    parent = _registered_version(source, tracking_uri) if source.startswith("models:/") else None
    model = load_model(parent or source, "cpu", tracking_uri)
    discriminator, settings = None, model.spec["model"]
    local = not source.startswith(("models:/", "runs:/"))
    if local:
        source = str(Path(source).resolve())  # lineage that holds from any directory
    if local and not (Path(source) / SPEC).is_file():
        from gan_dist.run import checkpoint

        ckpt = checkpoint.read(_checkpoint_of(Path(source)))
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


def _registered_version(uri: str, tracking_uri: str | None) -> str:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> models:/NAME/VERSION."""
    from mlflow.exceptions import MlflowException

    from gan_dist.tracking.stores import open_store
    from gan_dist.tracking.stores import tracking_uri as default_uri

    name, _, version = uri.removeprefix("models:/").partition("/")
    if version:
        return uri
    name, _, alias = name.partition("@")
    client = open_store(tracking_uri or default_uri(), create=False)
    try:
        found = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        said = _what_is_registered(uri, client) or str(exc).splitlines()[0]
        raise GanDistError(f"model.init {uri}: {said}") from None
    return f"models:/{name}/{found.version}"


def _what_is_registered(uri: str, client: Any = None) -> str | None:
    """Why a models:/ URI names nothing, with what the store does hold: the registered
    names (closest first), or the model's aliases and versions. None when the store cannot
    be asked, or the URI does name something."""
    import difflib

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    rest = uri.removeprefix("models:/")
    name, _, version = rest.partition("/")
    name, _, alias = name.partition("@")
    client = client or MlflowClient()
    try:
        names = sorted(m.name for m in client.search_registered_models())
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            held = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") or "none"
            shape = "" if alias or version else "; give models:/NAME@ALIAS or models:/NAME/VERSION"
            return f"no registered model named {name!r}{hint}; registered: {held}{shape}"
        versions = sorted(
            int(v.version) for v in client.search_model_versions(f"name='{_quote(name)}'")
        )
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return None
    held = ", ".join(f"@{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
    span = ", ".join(map(str, versions[:3])) + (
        f", ... {versions[-1]}" if len(versions) > 3 else ""
    )
    span = span or "none"
    if alias and alias not in aliases:
        close = difflib.get_close_matches(alias, list(aliases), n=1)
        hint = f" (did you mean @{close[0]}?)" if close else ""
        return f"{name} has no alias @{alias}{hint}; its aliases: {held}; its versions: {span}"
    if version and (not version.isdigit() or int(version) not in versions):
        return f"{name} has no version {version}; its versions: {span}; its aliases: {held}"
    if not (alias or version):
        return (
            f"give a version or an alias: models:/{name}/VERSION (versions {span}) or "
            f"models:/{name}@ALIAS (aliases: {held})"
        )
    return None


def _checkpoint_of(path: Path) -> Path:
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
        found = _what_is_registered(uri) if uri.startswith("models:/") else None
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


# --- registry ------------------------------------------------------------------------------


@dataclass
class Registered:
    name: str
    version: str
    run_id: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def register(source: Path, name: str, tracking_uri: str) -> Registered:
    """Log a checkpoint's EMA generator into its MLflow run (a new run if the checkpoint
    has none) and register it as a new version of `name`, with its validation metrics as
    version tags. A checkpoint already registered as a version of `name` is that version:
    registering it again makes no second one."""
    import mlflow

    from gan_dist.run import checkpoint
    from gan_dist.tracking.experiments import experiment_id, run_exists
    from gan_dist.tracking.stores import open_store

    ckpt_path = _checkpoint_of(source).resolve()
    ckpt = checkpoint.read(ckpt_path)
    recipe = saved_recipe(ckpt)
    client = open_store(tracking_uri)
    weights = _file_sha256(ckpt.path / "ema.safetensors")
    known = _version_with_weights(client, name, weights)
    if known is not None:
        log.warning("%s is already version %s of %s", ckpt_path, known.version, name)
        return Registered(name, str(known.version), known.run_id)
    mlflow.set_tracking_uri(tracking_uri)
    run_id = ckpt.state.get("tracking_run_id")
    if run_id is not None and not run_exists(client, run_id):
        log.warning("run %s of %s is not in %s; logging to a new run", run_id, source, tracking_uri)
        run_id = None
    if run_id is None:
        mlflow.set_experiment(
            experiment_id=experiment_id(client, recipe.tracking.experiment or recipe.name)
        )
    previous = client.get_run(run_id).info.status if run_id else None
    with tempfile.TemporaryDirectory(prefix="gan-dist-register-") as tmp:
        spec = export_checkpoint(ckpt_path, Path(tmp))
        with mlflow.start_run(run_id=run_id) as run:
            info = mlflow.pyfunc.log_model(name=ARTIFACT_NAME, **pyfunc_arguments(Path(tmp)))
            run_id = run.info.run_id
    if previous and previous != "FINISHED":
        client.set_terminated(run_id, previous)  # registering does not end a running job
    # the weights tag is made with the version, so a crowd registering the same weights
    # sees every earlier one: all but the first remove their own and report the first
    created = mlflow.register_model(info.model_uri, name, tags={"weights_sha256": weights})
    version = str(created.version)
    first = _version_with_weights(client, name, weights)
    if first is not None and str(first.version) != version:
        client.delete_model_version(name, version)
        log.warning("%s is already version %s of %s", ckpt_path, first.version, name)
        return Registered(name, str(first.version), first.run_id)
    tags = {f"val.{k}": f"{v:.6g}" for k, v in spec["metrics"].items()}
    tags |= {"step": str(ckpt.step), "recipe": recipe.name, "checkpoint": str(ckpt_path)}
    tags |= ckpt.state.get("lineage", {})  # init and parent: what it was fine-tuned from
    for kind, entry in spec["families"].items():
        package = f" ({entry['package']} {entry['version']})" if entry["package"] else ""
        tags[kind] = f"{entry['name']}{package}"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return Registered(name, version, run_id)


def _version_with_weights(client, name: str, weights: str):
    """The oldest version of `name` whose weights_sha256 tag is `weights`, or None: the
    same weights, not the same path, since a run dir deleted and trained again reuses it."""
    same = [
        v
        for v in client.search_model_versions(f"name='{_quote(name)}'")
        if v.tags.get("weights_sha256") == weights
    ]
    return min(same, key=lambda v: int(v.version), default=None)


def pyfunc_arguments(folder: Path) -> dict[str, Any]:
    """What `mlflow.pyfunc.log_model` (or `save_model`) is given for the repair model in
    `folder` (its spec.json and weights.safetensors): the wrapper's code as a model from
    code, the two files as artifacts, the pinned requirements, the signature and a sample
    request."""
    import gan_dist

    spec = json.loads((folder / SPEC).read_text())
    return {
        "python_model": str(Path(gan_dist.__file__).with_name("mlflow_model.py")),
        "artifacts": {"spec": str(folder / SPEC), "weights": str(folder / WEIGHTS)},
        "pip_requirements": _requirements(spec),
        "signature": signature(),
        "input_example": _input_example(),
    }


def signature():
    """The served model's MLflow signature (see `mlflow_model.py`): rows of image and mask
    file bytes in; the repaired file's bytes, its suffix, status and detail out; the tiling
    of `gan-dist repair` as params with its defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from gan_dist.repair_files import BATCH, OVERLAP, TILE

    inputs = Schema([ColSpec("binary", "image"), ColSpec("binary", "mask", required=False)])
    outputs = Schema(
        [ColSpec("binary", "image")]
        + [ColSpec("string", c) for c in ("format", "status", "detail")]
    )
    params = ParamSchema(
        [
            ParamSpec("format", "string", "same"),
            ParamSpec("tile", "long", TILE),
            ParamSpec("overlap", "long", OVERLAP),
            ParamSpec("batch", "long", BATCH),
        ]
    )
    return ModelSignature(inputs, outputs, params)


def _input_example():
    """A request MLflow stores with the model (and shows as its sample request): a 32 px
    8-bit grey image with a square hole in its mask, as PNG bytes."""
    import numpy as np
    import pandas as pd

    from gan_dist.data.images import encode_png

    ramp = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8)[:, :, None] * 4
    hole = np.zeros_like(ramp)
    hole[8:24, 8:24] = 255
    return pd.DataFrame({"image": [encode_png(ramp)], "mask": [encode_png(hole)]})


def register_completed(run: Recipe, checkpoint_path: Path) -> Registered | None:
    """A completed run's `tracking.register_as`, registered by the command that trained it
    (`gan-dist train`, the demo): None when the recipe registers nothing or does not track.
    Training is done and its checkpoint safe, so a registry failure is a warning with the
    command to retry, never an error."""
    from gan_dist.tracking.stores import tracking_uri

    name = run.tracking.register_as
    if not (name and run.tracking.enabled):
        return None
    try:
        return register(checkpoint_path, name, tracking_uri(run))
    except Exception as exc:  # the store's failure must not turn a finished run into an error
        log.warning(
            "could not register %s as %s (%s); retry with: gan-dist models register %s --name %s",
            checkpoint_path,
            name,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            checkpoint_path,
            name,
        )
        return None


def _requirements(spec: dict[str, Any]) -> list[str]:
    """gan-dist and every installed package that provided one of the model's families, at
    the versions it was trained with (what `mlflow models serve` installs)."""
    from gan_dist import __version__

    pins = {"gan-dist": __version__}
    for entry in spec["families"].values():
        if entry["package"] and entry["version"]:
            pins.setdefault(entry["package"], entry["version"])
    return [f"{package}=={version}" for package, version in pins.items()]


PROMOTE_BY = "val.hole_psnr"  # the version tag an alias follows (higher is better)


def promote_if_as_good(name: str, version: str, alias: str, tracking_uri: str) -> str:
    """Moves `alias` to `version` unless the version it points at scored better on
    PROMOTE_BY, or has that score while `version` has none (trained without validation: it
    cannot be shown as good); a version without the score never blocks one with it.
    Returns what happened, in a sentence."""
    from mlflow.exceptions import MlflowException

    from gan_dist.tracking.stores import open_store

    client = open_store(tracking_uri, create=False)
    new = _score(client.get_model_version(name, version).tags)
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no version has the alias yet
        current = None
    if current is not None and str(current.version) != str(version):
        old = _score(current.tags)
        if old is not None and (new is None or new < old):
            said = (
                f"scored {new:.4g}" if new is not None else f"has no {PROMOTE_BY} (no validation)"
            )
            return (
                f"kept @{alias} on version {current.version} ({PROMOTE_BY} {old:.4g}): "
                f"version {version} {said}"
            )
    promote(name, version, alias, tracking_uri)
    score = f" ({PROMOTE_BY} {new:.4g})" if new is not None else ""
    return f"moved @{alias} to version {version}{score}"


def _score(tags: dict[str, str]) -> float | None:
    try:
        return float(tags[PROMOTE_BY])
    except (KeyError, ValueError):
        return None


def promote(name: str, version: str, alias: str, tracking_uri: str) -> None:
    """Point an alias at an existing version; a store that does not exist is not created."""
    from mlflow.exceptions import MlflowException

    from gan_dist.tracking.stores import open_store

    client = open_store(tracking_uri, create=False)
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        raise GanDistError(f"models:/{name}/{version}: {exc.message}") from None


def list_versions(name: str | None, tracking_uri: str) -> list[dict[str, Any]]:
    """One row per version (newest first), of one model or of all. A store that does not
    exist is not created: listing it would show nothing and leave an empty one behind."""
    from gan_dist.tracking.stores import open_store

    client = open_store(tracking_uri, create=False)
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model_name in names:
        found = client.search_model_versions(f"name='{_quote(model_name)}'")
        if name and not found:
            raise GanDistError(f"no registered model named {name!r} in {tracking_uri}")
        aliases = client.get_registered_model(model_name).aliases  # search omits them
        for mv in sorted(found, key=lambda v: -int(v.version)):
            rows.append(
                {
                    "name": mv.name,
                    "version": str(mv.version),
                    "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
                    "metrics": {k[4:]: v for k, v in mv.tags.items() if k.startswith("val.")},
                    "step": mv.tags.get("step"),
                    "run_id": mv.run_id,
                    "created": mv.creation_timestamp,
                }
            )
    return rows


def _quote(name: str) -> str:
    return name.replace("'", "\\'")
