"""The families a recipe can name: generators, discriminators and adversarial objectives.

One table per kind is the single source of truth (as BasicSR keeps its registries):
recipes validate names and settings against it, "did you mean" draws on it, nets are built
from it, and a saved model records which package provided each family. A name resolves, in
order, to:

1. a family built into gan-dist (`families.py`);
2. a family an installed package declares as an entry point in the group `gan_dist.generators`,
   `gan_dist.discriminators` or `gan_dist.objectives`:

       [project.entry-points."gan_dist.generators"]
       tiny = "my_nets:tiny"

3. a `package.module:attribute` reference written in the recipe itself.

A family declares its typed settings (a pydantic model: the recipe keys beside `name`,
validated with dotted paths like every recipe error) and what the rest of gan-dist needs to
know: the size its input must be divisible by (generators), whether it is a Wasserstein
critic (objectives). Nothing here imports torch: builders are imported when a net is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from gan_dist.core.errors import GanDistError
from gan_dist.core.signals import from_outside
from gan_dist.core.textfiles import excerpt

log = logging.getLogger("gan_dist.registry")

KINDS = {
    "generator": "gan_dist.generators",
    "discriminator": "gan_dist.discriminators",
    "objective": "gan_dist.objectives",
}


class Settings(BaseModel):
    """Base of every family's settings: typed, unknown keys refused, floats finite (as in
    every recipe section)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def _no_divisor(settings: Any, image_size: int) -> int:
    return 1


@dataclass(frozen=True)
class Family:
    """What a recipe's name stands for.

    build: the builder, or "module:attribute" imported on first use. Generators are called
        `build(settings, in_channels, out_channels, image_size) -> nn.Module` mapping
        (N, in_channels, S, S) in [-1, 1] to (N, out_channels, S, S) in [-1, 1];
        discriminators `build(settings, in_channels, image_size) -> nn.Module` returning
        logits, and `(logits, features)` when called with `features=True`; objectives
        `build(settings) -> gan_dist.objectives.Adversarial`. The arguments are passed by
        these names (settings positionally).
    settings: the family's recipe keys, a `Settings` subclass.
    size_divisor: (settings, training image size px) -> px every input side must be a
        multiple of (generators: 2**downsamplings; 1 when any size works): an int >= 1.
    critic: objectives only: a Wasserstein critic (gradient penalty, no real/fake target).
    label, plugin: set by `Registry.get`: who provides the family, in words, and whether
        its code is a plugin's (whose faults are named as the plugin's, see `run`).
    """

    build: Callable[..., Any] | str
    settings: type[Settings] = Settings
    size_divisor: Callable[[Any, int], int] = _no_divisor
    critic: bool = False
    about: str = ""
    label: str = ""
    plugin: bool = False

    def builder(self) -> Callable[..., Any]:
        if isinstance(self.build, str):
            return self.run("its builder reference", _resolve, self.build)
        return self.build

    def run(
        self,
        what: str,
        call: Callable[..., Any],
        *args: Any,
        passes: tuple[type[BaseException], ...] = (),
        **kwargs: Any,
    ) -> Any:
        """`call(*args, **kwargs)`; for a plugin family, anything it raises (SystemExit
        and other BaseExceptions included: a plugin must not end the process, least of all
        with status 0) except a stop from outside (see `signals.from_outside`) and the
        `passes` kinds is a PluginError naming the family, its package, `what`, and the
        line of the plugin's code that raised it where one is on the traceback."""
        if not self.plugin:
            return call(*args, **kwargs)
        try:
            return call(*args, **kwargs)
        except BaseException as exc:
            error = None if isinstance(exc, passes) else self.fault(what, exc)
            if error is None:
                raise
            raise error from None

    def fault(self, what: str, exc: BaseException) -> PluginError | None:
        """What `exc`, raised by the family's code doing `what`, is to be raised as: a
        PluginError naming the family, its package and the line of the plugin's code that
        raised it (where one is on the traceback); None for a stop from outside (see
        `signals.from_outside`), which is raised on as it is."""
        if from_outside(exc):
            return None
        return PluginError(f"{self.label}: {what} failed ({_raised(exc)}){_at(exc)}")

    def validate(self, given: dict[str, Any]) -> Settings:
        """The family's typed settings from a recipe's keys, floats finite whatever the
        settings class says (a plugin's may be a plain pydantic model). Raises pydantic's
        ValidationError for bad values, PluginError for a plugin settings class that fails
        otherwise."""
        checked = _finite(self.settings)
        return self.run("its settings", checked.model_validate, given, passes=(ValidationError,))

    def divisor(self, settings: Any, image_size: int) -> int:
        """px every input side must be a multiple of, from `size_divisor`. Raises
        PluginError when it is not a whole number >= 1."""
        value = self.run("its size_divisor", self.size_divisor, settings, image_size)
        try:  # any integer type (numpy's too), never a float or a bool
            whole = None if isinstance(value, bool) else operator.index(value)
        except TypeError:
            whole = None
        if whole is None or whole < 1:
            raise PluginError(
                f"{self.label}: size_divisor returned {excerpt(value)} for {image_size} px; "
                "it must return a whole number of px, 1 or more"
            )
        return whole


@dataclass(frozen=True)
class Provider:
    """The distribution a family came from: (`gan-dist`, its version) for built-ins, an
    installed package's name and version, or (None, None) for a module on the path only.
    Read back from a model file, both are a stranger's text until `valid` says otherwise."""

    package: str | None
    version: str | None

    @property
    def valid(self) -> bool:
        """A PEP 508 distribution name and a PEP 440 version (or none): text that can be
        shown inside a command without quoting tricks."""
        from packaging.utils import InvalidName, canonicalize_name
        from packaging.version import InvalidVersion, Version

        if self.package is None:
            return self.version is None
        if not isinstance(self.package, str) or not isinstance(self.version, str | None):
            return False
        try:
            canonicalize_name(self.package, validate=True)
            if self.version is not None:
                Version(self.version)
        except (InvalidName, InvalidVersion):
            return False
        return True

    def __str__(self) -> str:
        """`package version`, the package alone, or `a module`; an invalid record is not
        echoed (it is a stranger's text)."""
        if self.package is None and self.version is None:
            return "a module"
        if not self.valid:
            return "a package whose recorded name or version is invalid"
        return f"{self.package} {self.version}" if self.version else str(self.package)

    def install_hint(self) -> str:
        """What to do to have the family: a pip command only for a valid name and version
        (a model file could otherwise print any shell command for the user to paste)."""
        if not self.valid:
            return (
                "the model file names an invalid package (not a PEP 508 name with a PEP 440 "
                "version): it may have been altered; get the model from its source again"
            )
        if self.package is None:
            return "put its module on PYTHONPATH"
        if self.version is None:
            return f"pip install '{self.package}'"
        from packaging.version import Version

        return f"pip install '{self.package}=={Version(self.version)}'"


@dataclass
class Registry:
    """The families of one kind, by name: built-in ones, then installed entry points."""

    kind: str
    builtins: dict[str, Family] = field(default_factory=dict)

    def get(self, name: str, saved: bool = False) -> Family:
        """The family a name stands for, with its `label` set. `saved`: the name was read
        from a file gan-dist wrote (a model's spec.json, a checkpoint's recipe), which anyone
        may have altered: it may name only a built-in family, an installed entry point, or
        an installed entry point's own `module:attribute`; any other module reference is
        refused without importing it.

        Raises UnknownFamily (a GanDistError) naming what is available and the closest
        names, naming both packages when two installed ones declare the name, and naming
        the entry point when importing it fails in any way (sys.exit included)."""
        points = _entry_points(KINDS[self.kind])
        if name in self.builtins:
            if name in points:
                _warn_shadowed(self.kind, name, points[name])
            return dataclasses.replace(
                self.builtins[name], label=f"{self.kind} '{name}' (built in)"
            )
        if name in points:
            if len(points[name]) > 1:
                raise UnknownFamily(self._ambiguous(name, points[name]))
            [point] = points[name]
            where = f"entry point {name} = {point.value} of {_dist(point)}"
            return self._plugin(point.load, where, f"{self.kind} '{name}' ({_dist(point)})")
        if ":" in name:
            quoted = shown(name)
            declared = [p for found in points.values() for p in found if p.value == name]
            if saved and not declared:
                raise UnknownFamily(
                    f"{quoted} is a module reference, and a model file may name only built-in "
                    f"or installed {self.kind}s (a file can be altered; gan-dist imports no "
                    "module it names): install the package that provides it with a "
                    f"gan_dist.{self.kind}s entry point (README: Plugins)"
                )
            provider = self.provider(name)
            label = f"{self.kind} {quoted} ({provider})"
            return self._plugin(lambda: _resolve(name), quoted, label)
        raise UnknownFamily(self.unknown(name))

    def _plugin(self, load: Callable[[], Any], where: str, label: str) -> Family:
        found = _imported(load, where)
        if not isinstance(found, Family):
            kind = type(found).__name__
            raise UnknownFamily(f"{where} is {_a(kind)} {kind}, not a gan_dist Family")
        settings = found.settings
        if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
            raise UnknownFamily(f"{where}: its settings is not a pydantic model class")
        if not (callable(found.build) or isinstance(found.build, str)):
            raise UnknownFamily(f"{where}: its build is not callable")
        return dataclasses.replace(found, label=label, plugin=True)

    def _ambiguous(self, name: str, points: list[metadata.EntryPoint]) -> str:
        both = " and ".join(f"{_dist(p)} ({p.value})" for p in points)
        return (
            f"'{name}': two installed packages declare {_a(self.kind)} {self.kind} of this "
            f"name, {both}; uninstall one, or name the one you mean by its reference, e.g. "
            f"'{points[0].value}'"
        )

    def names(self) -> list[str]:
        """Built-in and installed names, sorted."""
        return sorted({*self.builtins, *_entry_points(KINDS[self.kind])})

    def provider(self, name: str) -> Provider:
        """Which distribution provides `name` here (for a model to record)."""
        if name in self.builtins:
            from gan_dist import __version__

            return Provider("gan-dist", __version__)
        found = _entry_points(KINDS[self.kind]).get(name, [])
        if len(found) == 1 and found[0].dist is not None:
            return Provider(found[0].dist.name, found[0].dist.version)
        top = name.split(":")[0].split(".")[0]
        packages = metadata.packages_distributions().get(top, [])
        if packages:
            return Provider(packages[0], installed_version(packages[0]))
        return Provider(None, None)

    def unknown(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return (
            f"{shown(name)} is not {_a(self.kind)} {self.kind}{hint} (available: "
            f"{', '.join(names)}; or a package.module:name reference)"
        )


class UnknownFamily(GanDistError):
    """A recipe or model names a family that is neither built in nor installed."""


class PluginError(GanDistError):
    """A plugin family broke its contract (a builder that raises or returns the wrong
    thing, a size_divisor of 0, a net too large to allocate) or tried to end the process."""

    exit_code = 2


@cache
def _finite(settings: type[BaseModel]) -> type[BaseModel]:
    """`settings`, or a subclass of it refusing inf and nan, as every recipe value does."""
    if settings.model_config.get("allow_inf_nan") is False:
        return settings
    config = {**settings.model_config, "allow_inf_nan": False}
    return type(settings.__name__, (settings,), {"model_config": config})


def _imported(load: Callable[[], Any], where: str) -> Any:
    """A plugin's object; anything importing it raises (a missing module, a module that
    raises, a malformed reference, sys.exit) is an UnknownFamily naming it, never a
    traceback and never the end of the process. Ctrl-C stays Ctrl-C (`from_outside`)."""
    try:
        return load()
    except BaseException as exc:
        if from_outside(exc):
            raise
        raise UnknownFamily(f"{where}: cannot import it ({_raised(exc)})") from None


def _raised(exc: BaseException) -> str:
    """What plugin code did, in one line: `called sys.exit(0)` or `TypeError: ...`."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({excerpt(exc.code, 40)})"
    try:  # a plugin's exception may fail even to say what it is
        lines = str(exc).strip().splitlines()
    except Exception:
        lines = ["(its message could not be read)"]
    first = lines[0] if lines else ""
    first = first if first.isprintable() else repr(first)[1:-1]
    return type(exc).__name__ + (f": {first[:200]}" if first else "")


def _at(exc: BaseException) -> str:
    """` at FILE:LINE`: the innermost line on the traceback that is neither gan-dist's,
    torch's nor the standard library's (the plugin's, or a library it calls); "" if none."""
    import sysconfig
    import traceback

    paths = sysconfig.get_paths()
    ours = [Path(__file__).parent]
    torch = sys.modules.get("torch")
    if torch is not None and torch.__file__:
        ours.append(Path(torch.__file__).parent)
    # without a venv, site-packages lies inside the standard library's folder
    installed = [Path(paths["purelib"]), Path(paths["platlib"])]

    def within(path: Path, roots: list[Path]) -> bool:
        return any(path.is_relative_to(root) for root in roots)

    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename)
        stdlib = within(path, [Path(paths["stdlib"])]) and not within(path, installed)
        if path.is_absolute() and not within(path, ours) and not stdlib:
            return f" at {frame.filename}:{frame.lineno}"
    return ""


def shown(name: str) -> str:
    """A name in quotes as given, or as an escaped excerpt when it holds control
    characters or is long (a model file's text must not write over the terminal)."""
    if name.isprintable() and len(name) <= 100:
        return f"'{name}'"
    return excerpt(name, 100)


def _dist(point: metadata.EntryPoint) -> str:
    dist = point.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown package"


@cache
def _warn_shadowed(kind: str, name: str, points: tuple[metadata.EntryPoint, ...]) -> None:
    """Once per process: an installed package declares a built-in name, which wins."""
    theirs = ", ".join(f"{_dist(p)} ({p.value})" for p in points)
    log.warning(
        "%s '%s': the built-in family is used; %s also declares one of this name: name it by "
        "its reference to use it",
        kind,
        name,
        theirs,
    )


def _a(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _resolve(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    target: Any = importlib.import_module(module)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportError(f"{module} has no attribute {attribute}") from None
    return target


@cache
def _entry_points(group: str) -> dict[str, tuple[metadata.EntryPoint, ...]]:
    """Installed entry points of a group by name; a name several distributions declare
    keeps them all (the same distribution seen twice on the path counts once)."""
    found: dict[str, dict[tuple[str, str], metadata.EntryPoint]] = {}
    for point in metadata.entry_points(group=group):
        owner = point.dist.name if point.dist is not None else ""
        found.setdefault(point.name, {}).setdefault((owner.lower(), point.value), point)
    return {name: tuple(points.values()) for name, points in found.items()}


def installed_version(package: str | None) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    if package is None:
        return None
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def registry(kind: str) -> Registry:
    """The table of one kind: "generator", "discriminator" or "objective"."""
    from gan_dist.families import BUILTINS

    return Registry(kind, BUILTINS[kind])


__all__ = [
    "KINDS",
    "Family",
    "PluginError",
    "Provider",
    "Registry",
    "Settings",
    "UnknownFamily",
    "installed_version",
    "registry",
    "shown",
]
