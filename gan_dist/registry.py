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

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict

from gan_dist.errors import GanDistError

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
        `build(settings) -> gan_dist.objectives.Adversarial`.
    settings: the family's recipe keys, a `Settings` subclass.
    size_divisor: (settings, training image size px) -> px every input side must be a
        multiple of (generators: 2**downsamplings; 1 when any size works).
    critic: objectives only: a Wasserstein critic (gradient penalty, no real/fake target).
    """

    build: Callable[..., Any] | str
    settings: type[Settings] = Settings
    size_divisor: Callable[[Any, int], int] = _no_divisor
    critic: bool = False
    about: str = ""

    def builder(self) -> Callable[..., Any]:
        return _resolve(self.build) if isinstance(self.build, str) else self.build


@dataclass(frozen=True)
class Provider:
    """The distribution a family came from: (`gan-dist`, its version) for built-ins, an
    installed package's name and version, or (None, None) for a module on the path only."""

    package: str | None
    version: str | None

    def install_hint(self) -> str:
        if self.package is None:
            return "put its module on PYTHONPATH"
        return f"pip install '{self.package}=={self.version}'"


@dataclass
class Registry:
    kind: str
    builtins: dict[str, Family] = field(default_factory=dict)

    def get(self, name: str) -> Family:
        """The family a recipe's name stands for. Raises UnknownFamily (a GanDistError)
        naming what is available and the closest names."""
        if name in self.builtins:
            return self.builtins[name]
        points = _entry_points(KINDS[self.kind])
        if name in points:
            where = f"entry point {name} = {points[name].value}"
            return _checked(_imported(points[name].load, where), where)
        if ":" in name:
            return _checked(_imported(lambda: _resolve(name), f"'{name}'"), f"'{name}'")
        raise UnknownFamily(self.unknown(name))

    def names(self) -> list[str]:
        """Built-in and installed names, sorted."""
        return sorted({*self.builtins, *_entry_points(KINDS[self.kind])})

    def provider(self, name: str) -> Provider:
        if name in self.builtins:
            from gan_dist import __version__

            return Provider("gan-dist", __version__)
        point = _entry_points(KINDS[self.kind]).get(name)
        if point is not None and point.dist is not None:
            return Provider(point.dist.name, point.dist.version)
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
            f"'{name}' is not {_a(self.kind)} {self.kind}{hint} (available: {', '.join(names)}; "
            "or a package.module:name reference)"
        )


class UnknownFamily(GanDistError):
    """A recipe or model names a family that is neither built in nor installed."""


def _imported(load: Callable[[], Any], where: str) -> Any:
    """A plugin's object; any error importing it (a missing module, a module that raises,
    a malformed reference) is an UnknownFamily naming it, never a traceback."""
    try:
        return load()
    except Exception as exc:
        raise UnknownFamily(f"{where}: cannot import it ({type(exc).__name__}: {exc})") from None


def _checked(found: Any, where: str) -> Family:
    if not isinstance(found, Family):
        kind = type(found).__name__
        raise UnknownFamily(f"{where} is {_a(kind)} {kind}, not a gan_dist Family")
    return found


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
def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    return {point.name: point for point in metadata.entry_points(group=group)}


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
    "Provider",
    "Registry",
    "Settings",
    "UnknownFamily",
    "installed_version",
    "registry",
]
