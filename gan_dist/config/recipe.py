"""Typed recipes: the one config object a run is described by.

A recipe is YAML validated against pydantic models that reject unknown keys, so a typo such as
`bach_size` is an error with a hint instead of a silently ignored setting, and every error
names its dotted path. The nets and the adversarial objective are families from the registry
(`families.py`: built in or from an installed plugin), each validating its own settings; a
saved recipe (a checkpoint's, a model's spec) is read back with the `SAVED` context.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gan_dist.config.families import registry
from gan_dist.config.family import Settings, UnknownFamily
from gan_dist.core.errors import RecipeError
from gan_dist.core.textfiles import (
    MAX_DEPTH,
    UntrustedTextError,
    check_bounded,
    excerpt,
    read_text_file,
)

# ---------------------------------------------------------------------------------------------
# YAML: YAML 1.1 (PyYAML's default) reads `no`, `off`, `y` as booleans and `1e-4` as a string.
# `mixed_precision: no` would then become False. Recipes follow YAML 1.2 instead: only
# true/false are booleans, and exponent floats need no dot.
# ---------------------------------------------------------------------------------------------


class _RecipeLoader(yaml.SafeLoader):
    """Refuses nesting deeper than textfiles.MAX_DEPTH while composing, before PyYAML's
    recursive composer would reach Python's recursion limit."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise UntrustedTextError(
                    f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """YAML with the recipe's scalar rules, bounded (see textfiles.check_bounded); every
    problem is a RecipeError naming `source`."""
    try:
        value = yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass
        check_bounded(value, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([f"{where}: invalid YAML: {problem}"]) from None
    except ValueError as exc:  # an int past Python's digit limit, from PyYAML's constructor
        raise RecipeError([f"{source}: a value YAML cannot read ({excerpt(str(exc))})"]) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise RecipeError([f"{source}: nested too deeply to be a recipe"]) from None
    except UntrustedTextError as exc:
        where = f"{source}: " if str(exc).startswith("line ") else ""
        raise RecipeError([where + str(exc)]) from None
    return value


def read_yaml_file(path: Path, what: str = "a recipe") -> Any:
    """A YAML file we were handed, parsed with parse_yaml after textfiles' size and UTF-8
    checks; RecipeError for every problem."""
    try:
        text = read_text_file(path, what)
    except OSError as exc:
        raise RecipeError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UntrustedTextError as exc:
        raise RecipeError([str(exc)]) from None
    return parse_yaml(text, str(path))


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


class Section(BaseModel):
    """Every recipe section: unknown keys refused, defaults validated, and no float field
    takes inf or nan (a weight, rate, timeout or range of either is always a typo or a
    mistake, and would only surface mid-training as a non-finite loss)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"range must be [low, high] with low <= high, got {list(value)}")
    return value


Range = Annotated[tuple[NonNegativeFloat, NonNegativeFloat], Field()]


class _DamageStep(Section):
    p: float = Field(1.0, ge=0.0, le=1.0, description="probability that this step is applied")

    @field_validator("*", mode="after")
    @classmethod
    def _ranges_ordered(cls, value: Any) -> Any:
        if isinstance(value, tuple) and len(value) == 2:
            _ordered(value)
        return value


class MaskDamage(_DamageStep):
    """Pixels removed for inpainting; the only step that writes the stored mask."""

    type: Literal["mask"] = "mask"
    shape: Literal["strokes", "boxes", "mixed"] = "mixed"
    coverage: Range = (0.1, 0.4)
    fill: float = Field(0.0, ge=0.0, le=1.0, description="value written into holes, 0..1")

    @field_validator("coverage")
    @classmethod
    def _coverage_fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 0.95:
            raise ValueError("coverage is a fraction of the image and must stay <= 0.95")
        return value


class GaussianNoise(_DamageStep):
    type: Literal["gaussian_noise"] = "gaussian_noise"
    sigma: Range = Field((0.01, 0.1), description="standard deviation, image scaled to 0..1")


class PoissonNoise(_DamageStep):
    """Shot noise as in low-dose imaging: fewer photons at white means more noise."""

    type: Literal["poisson_noise"] = "poisson_noise"
    peak: Range = Field((10.0, 200.0), description="photon count at full intensity")

    @field_validator("peak")
    @classmethod
    def _positive_peak(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0:
            raise ValueError("peak photon count must be > 0")
        return value


class Blur(_DamageStep):
    type: Literal["blur"] = "blur"
    sigma: Range = Field((0.5, 2.0), description="Gaussian sigma in pixels")


class Jpeg(_DamageStep):
    type: Literal["jpeg"] = "jpeg"
    quality: tuple[int, int] = (10, 60)

    @field_validator("quality")
    @classmethod
    def _quality_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not (1 <= value[0] <= value[1] <= 100):
            raise ValueError("quality must be [low, high] within 1..100")
        return value


class Downscale(_DamageStep):
    """Down- then up-scaling, the degradation super-resolution models undo."""

    type: Literal["downscale"] = "downscale"
    factor: Range = (2.0, 4.0)

    @field_validator("factor")
    @classmethod
    def _factor_above_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] < 1.0:
            raise ValueError("factor must be >= 1")
        return value


DamageStep = Annotated[
    Union[MaskDamage, GaussianNoise, PoissonNoise, Blur, Jpeg, Downscale],  # noqa: UP007
    Field(discriminator="type"),
]

DAMAGE_PRESETS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "inpaint": ("free-form strokes and boxes covering 10-40%", [{"type": "mask"}]),
    "inpaint-strokes": (
        "free-form brush strokes only (DeepFill/LaMa style)",
        [{"type": "mask", "shape": "strokes"}],
    ),
    "inpaint-boxes": ("rectangular holes only", [{"type": "mask", "shape": "boxes"}]),
    "denoise": ("additive Gaussian noise, sigma 0.01-0.1", [{"type": "gaussian_noise"}]),
    "low-dose": ("Poisson shot noise as in low-dose scans", [{"type": "poisson_noise"}]),
    "deblur": ("Gaussian blur, sigma 0.5-2 px", [{"type": "blur"}]),
    "jpeg": ("JPEG compression artefacts, quality 10-60", [{"type": "jpeg"}]),
    "superres": ("down- then up-scaling by 2-4x", [{"type": "downscale"}]),
    "old-photo": (
        "blur, noise and JPEG together, plus scratches as small holes",
        [
            {"type": "blur", "sigma": [0.3, 1.5], "p": 0.7},
            {"type": "gaussian_noise", "sigma": [0.01, 0.06], "p": 0.8},
            {"type": "jpeg", "quality": [30, 80], "p": 0.5},
            {"type": "mask", "shape": "strokes", "coverage": [0.01, 0.08]},
        ],
    ),
}


def damage_preset(name: str) -> list[dict[str, Any]]:
    if name not in DAMAGE_PRESETS:
        hint = _did_you_mean(name, DAMAGE_PRESETS)
        raise ValueError(
            f"unknown damage preset {excerpt(name)}{hint}; presets: {', '.join(DAMAGE_PRESETS)}"
        )
    return [dict(step) for step in DAMAGE_PRESETS[name][1]]


MIN_IMAGE_SIZE = 32  # px: below it the PatchGAN and DCGAN discriminators run out of pixels
MAX_IMAGE_SIZE = 8192  # px: a training sample larger than this is a typo, not a crop


class DataConfig(Section):
    train: str = Field(
        description="training shards: a packed directory, or a brace pattern such as "
        "shards/train-{000000..000031}.tar (a local path, or an object-store or web URL "
        "read through fsspec: s3://, gs://, https://; a pipe: command only with "
        "data.allow_shell)"
    )
    val: str | None = Field(
        "auto",
        description="validation shards; auto: the val split of the pack data.train names; "
        "null: no validation",
    )
    channels: Literal[1, 3] = 3
    image_size: int = Field(
        256,
        ge=MIN_IMAGE_SIZE,
        le=MAX_IMAGE_SIZE,
        description="px; the nets' smallest input is 32 px",
    )
    batch_size: PositiveInt = Field(16, le=65536, description="per device")
    workers: NonNegativeInt = Field(
        default_factory=lambda: default_workers(),
        le=256,
        description="data worker processes per rank; unset: up to 4, leaving this process a "
        "core of its own (1 on a 2-core machine)",
    )
    shuffle_buffer: NonNegativeInt = 1000
    stall_timeout_s: PositiveFloat = Field(
        60.0,
        description="a training stream that reads no sample this long, every shard failing "
        "twice, stops the run with an error instead of retrying for ever",
    )
    augment: StrictBool = Field(
        False,
        description="random flips and quarter turns of training samples: eight views of each "
        "crop, for small datasets",
    )
    damage: list[DamageStep] = Field(
        default_factory=lambda: damage_preset("inpaint"),
        description="a preset name or a list of steps; used by `data pack --damage RECIPE` "
        "and, with fresh_damage, by training",
    )
    fresh_damage: StrictBool = Field(
        False,
        description="draw new damage from data.damage for every training sample each time it "
        "is read (LaMa draws masks on the fly), instead of the damage packed with it; "
        "validation keeps the packed damage",
    )
    allow_shell: StrictBool = Field(
        False,
        description="let data.train and data.val be `pipe:COMMAND` URLs, whose command runs "
        "in a shell on every rank; off, no recipe value ever reaches a shell",
    )

    @field_validator("damage", mode="before")
    @classmethod
    def _expand_preset(cls, value: Any) -> Any:
        return damage_preset(value) if isinstance(value, str) else value

    @field_validator("train", "val")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name shards (a directory or a pattern), not be empty")
        return value

    @model_validator(mode="after")
    def _shell_only_when_allowed(self) -> DataConfig:
        for name in ("train", "val"):
            value = getattr(self, name)
            if value and "pipe:" in value and not self.allow_shell:
                raise ValueError(
                    f"{name}: a pipe: URL runs a shell command on every rank; set "
                    "data.allow_shell: true to allow it, or read object stores by URL "
                    "(s3://, gs://, https://)"
                )
        return self

    def shell_commands(self) -> list[str]:
        """The pipe: commands this recipe runs (empty unless data.allow_shell)."""
        specs = [v for v in (self.train, self.val) if v and "pipe:" in v]
        return [spec[spec.index("pipe:") + 5 :] for spec in specs] if self.allow_shell else []


def default_workers() -> int:
    """Data workers when a recipe sets none: up to 4, one core fewer than this process may
    use (torch warns, and the loop waits, when workers outnumber the cores)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(4, (cores or 1) - 1))


SAVED = {"saved": True}  # validation context for recipes and specs that gan-dist wrote


def _saved(info: ValidationInfo) -> bool:
    """Whether what is validated was read from a file gan-dist wrote (`SAVED`): a model's
    spec or a checkpoint's recipe, which name only families that need no module import."""
    return bool(info.context and info.context.get("saved"))


class _FamilyConfig(Section):
    """`name` picks a family (`families.py`: built in, installed, or `package.module:name`);
    every other key is one of that family's typed settings, validated by the family. Saved
    models and checkpoints are read with `context={"saved": True}`: keys that an older
    gan-dist wrote for every family alike are dropped instead of refused."""

    model_config = ConfigDict(extra="allow", validate_default=True)
    _kind: ClassVar[str]
    _settings: Settings | None = PrivateAttr(None)
    name: str

    @model_validator(mode="after")
    def _family_settings(self, info: ValidationInfo) -> _FamilyConfig:
        saved = _saved(info)
        try:
            family = registry(self._kind).get(self.name, saved)
        except UnknownFamily as exc:
            problems = [("name", str(exc))]
            raise PydanticCustomError("family", "{problems}", {"problems": problems}) from None
        given = dict(self.model_extra or {})
        if saved:
            given = {k: v for k, v in given.items() if k in family.settings.model_fields}
        try:
            self._settings = family.validate(given)
        except ValidationError as exc:
            own = tuple(type(self).model_fields)
            problems = [_setting_problem(e, family.settings, self.name, own) for e in exc.errors()]
            raise PydanticCustomError("family", "{problems}", {"problems": problems}) from None
        self.__pydantic_extra__ = self._settings.model_dump(mode="json")
        return self

    @property
    def settings(self) -> Settings:
        """The family's typed settings (its `Settings` subclass)."""
        assert self._settings is not None
        return self._settings


def _setting_problem(
    err: dict[str, Any], settings: type[Settings], name: str, beside: tuple[str, ...] = ()
):
    """(dotted path inside the family's settings, message) for one settings error; `beside`:
    the section's own keys, also offered for a misspelt key."""
    where = _format_loc(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        fields = list(settings.model_fields)
        hint = _did_you_mean(str(err["loc"][-1]), [*beside, *fields])
        return where, f"unknown key{hint}; {name} takes {', '.join(fields) or 'no settings'}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] != "missing" and "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {excerpt(err['input'])})"
    return where, msg


class GeneratorConfig(_FamilyConfig):
    _kind = "generator"
    name: str = "unet"


class DiscriminatorConfig(_FamilyConfig):
    _kind = "discriminator"
    name: str = "patchgan"
    spectral_norm: StrictBool = False


class ModelConfig(Section):
    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    composite: StrictBool = Field(
        True, description="paste known pixels back over the output (inpainting); off for noise"
    )
    prefill: Literal["biharmonic", "harmonic", "patchmatch", "patchmatch+biharmonic", "none"] = (
        Field(
            "biharmonic",
            description="fill holes classically first and train the generator to correct that "
            "fill: by diffusion (biharmonic carries gradients in, harmonic only values, both "
            "smooth) or with patches copied from the image's known part (patchmatch: texture); "
            "patchmatch+biharmonic: corrects the smooth fill plus the exemplar's detail, "
            "seeing the smooth fill beside it; "
            "none: the generator paints holes from scratch, as pix2pix does",
        )
    )
    correction_lowpass: NonNegativeFloat = Field(
        0.0,
        le=16,
        description="px: blur the generator's correction of its prefill by a Gaussian of this "
        "sigma, so it fixes colour and structure and the prefill's detail above it (an "
        "exemplar's texture) passes through; 0: a free correction",
    )
    noise: StrictBool = Field(
        False,
        description="feed the generator a channel of Gaussian noise in the holes (StyleGAN's "
        "noise inputs), to synthesise grain with objective.texture_weight; repair draws it from "
        "each pixel's position, so a repair is reproducible and tiles agree",
    )
    init: str | None = Field(
        None,
        description="fine-tune: start from these generator weights (and the discriminator's "
        "when the source is a run or checkpoint): models:/NAME@ALIAS, models:/NAME/VERSION, "
        "runs:/RUN_ID/repair-model, or a run, checkpoint or model folder. The nets must match; "
        "the source is recorded as the run's parent. A resume continues from its checkpoint and "
        "refuses an init the run did not start from",
    )

    @model_validator(mode="after")
    def _correction_needs_a_prefill(self) -> ModelConfig:
        if self.correction_lowpass and self.prefill == "none":
            raise ValueError(
                "correction_lowpass blurs the generator's correction of its prefill, and "
                "model.prefill: none has none; set model.correction_lowpass: 0 or a prefill"
            )
        return self


class ObjectiveConfig(Section):
    adversarial: str = Field(
        "hinge",
        description="an objective family: bce (the non-saturating loss, Goodfellow et al. "
        "2014), lsgan, hinge, wgan-gp, or an installed one",
    )
    adversarial_settings: dict[str, Any] = Field(
        default_factory=dict, description="the adversarial family's own settings, if any"
    )
    adversarial_weight: NonNegativeFloat = 1.0
    mask_aware: StrictBool = Field(
        False,
        description="LaMa's discriminator target: only generated pixels of a repair count as "
        "fake, its known pixels as real (each logit weighted by the hole share under it)",
    )
    r1_weight: NonNegativeFloat = Field(
        0.0,
        description="gamma of the R1 penalty gamma/2 * E||grad D(real)||^2 (Mescheder et al. "
        "2018); 0: off",
    )
    r1_every: PositiveInt = Field(
        16,
        description="lazy R1 (StyleGAN2): applied every this many discriminator steps, "
        "weighted by as many",
    )
    l1_weight: NonNegativeFloat = 100.0
    hole_l1_weight: NonNegativeFloat = Field(0.0, description="extra L1 weight inside the mask")
    l1_lowpass_sigma: NonNegativeFloat = Field(
        0.0,
        le=16,
        description="px: compare only the low frequencies in the L1 terms (both images blurred "
        "by a Gaussian of this sigma), leaving texture to texture_weight and the adversarial "
        "term, as with model.prefill: patchmatch; 0: plain L1",
    )
    feature_matching_weight: NonNegativeFloat = 0.0
    ssim_weight: NonNegativeFloat = Field(0.0, description="weight of 1 - SSIM beside the L1")
    texture_weight: NonNegativeFloat = Field(
        0.0,
        description="weight of the texture loss: the sliced Wasserstein distance of the hole's "
        "7x7 Laplacian-pyramid patches to the original's (objectives.texture_swd, after Heitz "
        "et al. 2021); asks for the original's grain where L1 alone gives a flat patch; 0: off",
    )
    gp_weight: NonNegativeFloat = 0.0
    n_critic: PositiveInt = Field(1, description="discriminator steps per generator step")

    @model_validator(mode="after")
    def _adversarial_family(self, info: ValidationInfo) -> ObjectiveConfig:
        try:
            family = registry("objective").get(self.adversarial, _saved(info))
        except UnknownFamily as exc:
            raise PydanticCustomError(
                "family", "{problems}", {"problems": [("adversarial", str(exc))]}
            ) from None
        try:
            settings = family.validate(self.adversarial_settings)
        except ValidationError as exc:
            problems = [
                (f"adversarial_settings.{path}", msg)
                for path, msg in (
                    _setting_problem(e, family.settings, self.adversarial) for e in exc.errors()
                )
            ]
            raise PydanticCustomError("family", "{problems}", {"problems": problems}) from None
        self.adversarial_settings = settings.model_dump(mode="json")
        return self

    @property
    def critic(self) -> bool:
        """A Wasserstein critic (wgan-gp): gradient penalty, no real/fake target."""
        return registry("objective").get(self.adversarial).critic


class OptimizerConfig(Section):
    name: Literal["adam", "adamw"] = "adam"
    lr: PositiveFloat = 2.0e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: NonNegativeFloat = 0.0

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("betas must lie in [0, 1)")
        return value


class ScheduleConfig(Section):
    kind: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: NonNegativeInt = 0


class OptimConfig(Section):
    generator: OptimizerConfig = OptimizerConfig()
    discriminator: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: PositiveFloat | None = None


class MetricWeightsConfig(Section):
    """Weights files of the nets behind FID, KID and LPIPS; never downloaded (offline
    clusters). Without them, validation reports the weight-free metrics only."""

    inception: str | None = Field(
        None,
        description="torch-fidelity's Inception-v3 weights (pt_inception-2015-12-05-6726825d."
        "pth): FID and KID",
    )
    lpips: str | None = Field(
        None,
        description="torchvision weights of the LPIPS backbone (alexnet-owt-7be5be79.pth for "
        "alex): LPIPS",
    )
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"


class TrainConfig(Section):
    max_steps: PositiveInt | None = Field(
        10_000,
        description="stop (with a checkpoint) at this step; null: only train.max_minutes stops "
        "the run",
    )
    max_minutes: PositiveFloat | None = Field(
        None, description="also stop (with a checkpoint) after this much training time"
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="no (fp32; `fp32` is read as no), fp16 or bf16"
    )
    grad_accum: PositiveInt = 1
    ema: float = Field(
        0.999,
        ge=0.0,
        lt=1.0,
        description="decay of the EMA generator that validation, samples and export use; "
        "0: it is the generator itself, no averaging",
    )
    channels_last: StrictBool = False
    compile: StrictBool = False
    deterministic: StrictBool = False
    log_every: PositiveInt = 50
    checkpoint_every: PositiveInt = 1000
    keep_checkpoints: PositiveInt = 3
    sample_every: PositiveInt = 500
    eval_every: PositiveInt = 2000
    eval_batches: PositiveInt | None = Field(None, description="None: the whole val split")
    metric_weights: MetricWeightsConfig = MetricWeightsConfig()
    profile_steps: NonNegativeInt = Field(
        0,
        description="record this many steps with torch.profiler into RUN_DIR/profile "
        "(0: off); the run's first two steps are skipped",
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _fp32_is_no(cls, value: Any) -> Any:
        return "no" if value == "fp32" else value


class TrackingConfig(Section):
    enabled: StrictBool = True
    uri: str | None = Field(None, description="None: $MLFLOW_TRACKING_URI or ./mlflow.db")
    experiment: str | None = Field(None, description="None: the recipe name")
    register_as: str | None = None
    promote: str | None = Field(
        None,
        description="after registering, move this alias (e.g. champion) to the new version "
        "when its val.hole_psnr is at least the alias's current version's; says which",
    )
    sample_count: PositiveInt = 8
    flush_timeout_s: NonNegativeFloat = Field(
        60.0, description="at the end, wait this long for MLflow to take what is queued"
    )
    required: StrictBool = Field(
        True,
        description="a run whose MLflow run cannot be started stops (exit 4, checkpoints "
        "kept); false: it trains on untracked, with a warning",
    )


# SLURM reads #SBATCH lines itself (no shell), but a newline would start a shell line and a
# space or `;` is never part of a partition, account, QoS or memory value: such values are
# refused here, before anything is rendered or submitted.
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,:+-]+$")


def _slurm_name(value: str) -> str:
    if not _SLURM_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a SLURM name: use letters, digits and _ . , : + - only "
            "(no spaces, quotes, ';', '$' or newlines)"
        )
    return value


SlurmName = Annotated[str, AfterValidator(_slurm_name)]


class SlurmConfig(Section):
    partition: SlurmName | None = None
    account: SlurmName | None = None
    qos: SlurmName | None = None
    time: str = Field(
        "24:00:00",
        pattern=r"^(\d+-)?\d+(:\d{1,2}){0,2}$",
        description="minutes, MM:SS, HH:MM:SS, D-HH or D-HH:MM:SS",
    )
    constraint: str | None = Field(None, pattern=r"^[A-Za-z0-9_.,:|&*\[\]()!-]+$")
    cpus_per_task: PositiveInt | None = Field(
        None,
        description="CPUs of each node's launcher task, shared by its ranks and their data "
        "workers; None: 8 per GPU, or cpu_procs",
    )
    mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$", description="memory per node")
    job_name: SlurmName | None = Field(None, description="None: the recipe name")
    signal_lead_s: PositiveInt = Field(
        180, description="SIGUSR1 this long before the time limit: time to checkpoint"
    )
    max_requeues: NonNegativeInt = Field(
        20, description="requeue a preempted or timed-out job at most this often"
    )
    extra: list[str] = Field(default_factory=list, description="extra #SBATCH lines")
    srun_extra: list[str] = Field(
        default_factory=list, description="extra srun options, e.g. --container-image=..."
    )

    @field_validator("extra", "srun_extra")
    @classmethod
    def _options(cls, lines: list[str]) -> list[str]:
        for line in lines:
            if not line.startswith("-") or any(c in line for c in "\n\r\0"):
                raise ValueError(
                    f"{line!r}: each entry must be one option starting with '-' "
                    "(e.g. --gres=gpu:8), on one line"
                )
        return lines


class LaunchConfig(Section):
    nodes: PositiveInt = Field(1, le=100_000)
    gpus_per_node: PositiveInt | None = Field(None, le=64, description="None: every local GPU")
    cpu_procs: PositiveInt = Field(1, le=1024, description="processes on a machine without GPUs")
    rank_timeout_s: PositiveInt = Field(
        600,
        strict=True,  # `true` is not 1 s
        description="a rank silent this long (dead, hung) fails the job on every rank; "
        "rank-0 work such as evaluation must fit inside it",
    )
    main_port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="None: a free port (SLURM: the first free one from a port the job id gives)",
    )
    lock_wait_s: NonNegativeFloat | None = Field(
        None,
        description="a requeued SLURM job waits this long for the old job to release the "
        "run dir (None: half of rank_timeout_s); any other second trainer fails at once",
    )
    bucket_mb: int = Field(
        25,
        ge=1,
        le=4096,
        strict=True,  # `true` is not 1 MB
        description="DDP gradient bucket size, MB: larger buckets send fewer, larger "
        "messages (a link with high latency), smaller ones start sending earlier in the "
        "backward pass (docs/training.md, scaling across nodes)",
    )
    grad_compression: Literal["none", "bf16"] = Field(
        "none",
        description="bf16: gradients are all-reduced in bf16, half the bytes of fp32, for "
        "slow links (the optimiser still steps in fp32)",
    )
    slurm: SlurmConfig | None = None


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    seed: NonNegativeInt = 0
    data: DataConfig
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    launch: LaunchConfig = LaunchConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        train = self.train
        if train.max_steps is None and train.max_minutes is None:
            raise ValueError(
                "train.max_steps: null trains until train.max_minutes, which is not set; set "
                "one of them"
            )
        if train.max_steps is None and self.optim.schedule.kind != "constant":
            raise ValueError(
                f"optim.schedule.kind: {self.optim.schedule.kind} decays over train.max_steps, "
                "which is null (a time budget only); use constant, or set train.max_steps"
            )
        wgan = self.objective.critic
        if wgan and getattr(self.model.discriminator.settings, "norm", None) == "batch":
            raise ValueError(
                "model.discriminator.norm: batch norm breaks the WGAN-GP gradient penalty "
                "(it mixes samples in a batch); use layer, instance or none"
            )
        if wgan and self.objective.gp_weight == 0:
            raise ValueError("objective.gp_weight: wgan-gp needs a gradient penalty weight > 0")
        if wgan and (self.objective.r1_weight or self.objective.mask_aware):
            raise ValueError(
                "objective: r1_weight and mask_aware go with bce, hinge or lsgan; wgan-gp's "
                "critic has its own gradient penalty (gp_weight) and no real/fake target"
            )
        if self.objective.mask_aware and not self.model.composite:
            raise ValueError(
                "objective.mask_aware: needs model.composite: true (without compositing every "
                "pixel of a repair is generated)"
            )
        in_holes = (
            ("model.noise", self.model.noise),
            ("objective.texture_weight", self.objective.texture_weight),
        )
        for key, on in in_holes:
            if on and not self.model.composite:
                raise ValueError(
                    f"{key}: acts in the holes only, and needs model.composite: true "
                    "(inpainting); a restoration recipe has no hole to draw texture into"
                )
        gen = self.model.generator
        need = registry("generator").get(gen.name).divisor(gen.settings, self.data.image_size)
        if self.data.image_size % need:
            raise ValueError(
                f"data.image_size: {self.data.image_size} px is not a multiple of {need}, "
                f"which the {gen.name} generator needs (its down-samplings; "
                "model.generator.depth sets them where the family has it)"
            )
        if self.data.fresh_damage and not any(s.type == "mask" for s in self.data.damage):
            raise ValueError(
                "data.fresh_damage: data.damage draws no mask; fresh damage is drawn from "
                "data.damage, so give it a mask step (e.g. damage: inpaint)"
            )
        launch = self.launch  # the other ranks wait for rank 0's lock inside a collective
        if launch.lock_wait_s is not None and launch.lock_wait_s >= launch.rank_timeout_s:
            raise ValueError(
                f"launch.lock_wait_s: {launch.lock_wait_s:g} s must be shorter than "
                f"launch.rank_timeout_s ({launch.rank_timeout_s} s), which the other ranks wait"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Loading, overrides, errors
# ---------------------------------------------------------------------------------------------


def builtin_recipes_dir() -> Path:
    """Recipes ship inside the wheel; from a source checkout they live at the repo root."""
    package = Path(__file__).parents[1]
    packaged = package / "recipes"
    return packaged if packaged.is_dir() else package.parent / "recipes"


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(builtin_recipes_dir().glob("*.yaml"))}


def resolve_recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.exists():
        raise RecipeError([f"{name_or_path}: not a regular file; give a recipe YAML file"])
    builtins = builtin_recipes()
    if name_or_path in builtins:
        return builtins[name_or_path]
    hint = _did_you_mean(name_or_path, builtins)
    raise RecipeError(
        [
            f"{name_or_path}: no such file and no built-in recipe of that name{hint} "
            f"(built-in: {', '.join(builtins)})"
        ]
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], typed c); the value is read as YAML so 32, 1e-4, true, [1, 2]
    arrive typed and a quoted value stays a string. A value that is not there is refused,
    whatever the field: empty (`data.train=$SHARDS` with the variable unset) or a YAML
    comment (`#...`) would be read as null, then taken as a default or reported as None
    instead of the mistake it is; null is said as null."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise RecipeError([f"--set {text}: expected dotted.key=value, e.g. data.batch_size=8"])
    value = parse_yaml(raw, f"--set {key}")
    if value is None and raw.strip() not in ("null", "Null", "NULL", "~"):
        raise RecipeError(
            [
                f"--set {text}: no value (an unset shell variable gives none, and YAML reads "
                f"from # on as a comment): give one, or {key.strip()}=null where the field "
                "may be empty"
            ]
        )
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise RecipeError([f"--set {text}: {where} is {child!r}, not a section"])
            node = child
        node[path[-1]] = value
    return raw


def load_recipe(
    source: str | Path, overrides: list[str] | None = None, flags: dict[str, str] | None = None
) -> Recipe:
    """Load, override and validate; every problem is reported at once as `dotted.path: msg`,
    ending with the `--set` it came from, or the command-line flag it came from: `flags`
    maps overrides applied after `overrides` to their flags (`{"launch.main_port=99999":
    "--main-port 99999"}`)."""
    flags = flags or {}
    overrides = [*(overrides or []), *flags]
    path = resolve_recipe_path(str(source))
    raw = read_yaml_file(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError([f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}"])
    raw = apply_overrides(raw, overrides)
    _switch_families(raw, {tuple(parse_override(text)[0]) for text in overrides})
    shipped = not Path(
        str(source)
    ).is_file()  # a built-in recipe's name: its own file is not the user's
    label = f"the built-in recipe {source}" if shipped else str(path)
    try:
        return validate_recipe(raw, source=label)
    except RecipeError as exc:
        problems = _blame_overrides(exc.problems, overrides, flags)
        # the recipe itself is fine when every problem is the command line's: say so
        if all(p.endswith(")") and " (from -" in p for p in problems):
            given = "--set" if all(" (from --set " in p for p in problems) else "the command line"
            raise RecipeError(problems, exc.source, f"{given} does not fit {label}:") from None
        raise RecipeError(problems, exc.source) from None


def _blame_overrides(problems: list[str], overrides: list[str], flags: dict[str, str]) -> list[str]:
    """Each `dotted.path: message` on a path a --set gave, above it (a misspelt section:
    `trian.max_steps=3` is reported as `trian: unknown key`) or under it ends by naming that
    --set, or the flag `flags` says gave it: the typo is on the command line, not in the
    recipe file."""

    def related(key: str, where: str) -> bool:
        return key == where or where.startswith(key + ".") or key.startswith(where + ".")

    out = []
    for problem in problems:
        where = problem.split(": ", 1)[0]
        given = [text for text in overrides if related(text.partition("=")[0].strip(), where)]
        if given:
            problem += f" (from {flags.get(given[-1]) or '--set ' + given[-1]})"
        out.append(problem)
    return out


def _switch_families(raw: dict[str, Any], overridden: set[tuple[str, ...]]) -> None:
    """A family chosen by --set (`model.generator.name=resnet` on a U-Net recipe) keeps the
    recipe's settings that it shares and drops the others, which the recipe wrote for its own
    family; settings given by --set are always checked."""
    switches = {  # the key naming the family -> its kind, where its settings are
        ("model", "generator", "name"): ("generator", ("model", "generator")),
        ("model", "discriminator", "name"): ("discriminator", ("model", "discriminator")),
        ("objective", "adversarial"): ("objective", ("objective", "adversarial_settings")),
    }
    for name_path, (kind, where) in switches.items():
        name, settings = _at(raw, name_path), _at(raw, where)
        if name_path not in overridden or not isinstance(settings, dict):
            continue
        try:
            family = registry(kind).get(str(name))
        except UnknownFamily:
            continue  # validation says so, listing the names there are
        section = _fields_at(where) if kind != "objective" else []
        keep = {*section, *family.settings.model_fields}
        for key in [k for k in settings if k not in keep and (*where, k) not in overridden]:
            del settings[key]


def _at(raw: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def validate_recipe(
    raw: dict[str, Any], source: str = "<recipe>", context: dict[str, Any] | None = None
) -> Recipe:
    """A Recipe from parsed YAML or a saved recipe (`context=SAVED`); raises RecipeError
    listing every problem as `dotted.path: message`."""
    try:
        return Recipe.model_validate(raw, context=context)
    except ValidationError as exc:
        raise RecipeError(problem_lines(exc), source=source) from None


def problem_lines(exc: ValidationError) -> list[str]:
    """Each problem of a recipe (or of a model spec's recipe sections) as `dotted.path:
    message`, a family's own problems under its section's path."""
    return [line for err in exc.errors() for line in _format_error(err).split("\n")]


def resolve_damage(spec: str) -> tuple[list[DamageStep], str]:
    """`--damage`: a preset name, or a YAML file holding a recipe (its data.damage), a
    `damage:` key, or a bare list of steps. Returns the steps and a label for the manifest."""
    from pydantic import TypeAdapter

    path = Path(spec)
    if not path.is_file():
        try:
            raw: Any = damage_preset(spec)
        except ValueError as exc:
            raise RecipeError([f"--damage {spec}: {exc} (or give a YAML file)"]) from None
        label = f"preset:{spec}"
    else:
        doc = read_yaml_file(path, "a damage file")
        if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
            raw = doc["data"].get("damage", "inpaint")
        elif isinstance(doc, dict) and "damage" in doc:
            raw = doc["damage"]
        else:
            raw = doc
        if not isinstance(raw, (list, dict)):
            raise RecipeError(
                [
                    f"--damage {path}: not a damage file (a recipe, a `damage:` key or a list "
                    f"of steps; it holds {excerpt(raw)})"
                ]
            )
        label = f"file:{path}"
    try:
        steps = TypeAdapter(list[DamageStep]).validate_python(raw)
    except ValidationError as exc:
        problems = [_format_error(e) for e in exc.errors()]
        raise RecipeError(
            [f"damage{p if p.startswith('[') else '.' + p}" for p in problems],
            source=str(path) if path.is_file() else spec,
        ) from None
    if not steps:
        raise RecipeError([f"--damage {spec}: no damage steps"])
    return steps, label


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(recipe)"


def _format_error(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        fields = _fields_at(loc[:-1])
        hint = _did_you_mean(str(loc[-1]), fields) if fields else ""
        return f"{_format_loc(_strip_tags(loc))}: unknown key{hint}"
    if kind == "family":
        base = _format_loc(_strip_tags(loc))
        return "\n".join(f"{base}.{path}: {msg}" for path, msg in err["ctx"]["problems"])
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not loc:  # cross-field checks name their own dotted path
            return msg
    if (
        kind not in ("missing", "value_error")
        and "input" in err
        and not isinstance(err["input"], dict)
    ):
        msg += f" (got {excerpt(err['input'])})"
    return f"{_format_loc(_strip_tags(loc))}: {msg}"


_TAGS = {"mask", "gaussian_noise", "poisson_noise", "blur", "jpeg", "downscale"}


def _strip_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Pydantic puts the union member's tag into the path (`damage[0].mask.coverage`)."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        if part in _TAGS and i > 0 and isinstance(loc[i - 1], int):
            continue
        out.append(part)
    return tuple(out)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section at `loc`, for "did you mean" on an unknown key."""
    model: Any = Recipe
    for part in loc:
        model = _unwrap(model)
        if isinstance(part, int):
            args = typing.get_args(model)
            model = args[0] if args else None
        elif isinstance(model, list):  # members of a tagged union
            model = next((m for m in model if m.model_fields["type"].default == part), None)
        elif (
            isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields
        ):
            model = model.model_fields[part].annotation
        else:
            return []
    model = _unwrap(model)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
            else:
                return members
        else:
            return tp


def _did_you_mean(word: str, options: Any) -> str:
    if len(word) > 100:  # nothing that long is a typo of a name; difflib is quadratic
        return ""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
