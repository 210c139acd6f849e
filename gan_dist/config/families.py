"""The families a recipe can name: generators, discriminators and adversarial objectives.

One table per kind is the single source of truth (as BasicSR keeps its registries):
recipes validate names and settings against it, "did you mean" draws on it, nets are built
from it, and a saved model records which package provided each family. A name resolves, in
order, to:

1. a family built into gan-dist (`catalogue.py`);
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
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import metadata
from typing import Any

from pydantic import BaseModel

from gan_dist.config.catalogue import BUILTINS
from gan_dist.config.family import (
    Family,
    Provider,
    UnknownFamily,
    article,
    import_plugin,
    installed_version,
    resolve_reference,
    shown,
)

log = logging.getLogger("gan_dist.config.families")

KINDS = {
    "generator": "gan_dist.generators",
    "discriminator": "gan_dist.discriminators",
    "objective": "gan_dist.objectives",
}


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
                    f"gan_dist.{self.kind}s entry point (docs/recipes.md, "
                    '"Your own nets: plugins")'
                )
            provider = self.provider(name)
            label = f"{self.kind} {quoted} ({provider})"
            return self._plugin(lambda: resolve_reference(name), quoted, label)
        raise UnknownFamily(self.unknown(name, saved))

    def _plugin(self, load: Callable[[], Any], where: str, label: str) -> Family:
        found = import_plugin(load, where)
        if not isinstance(found, Family):
            kind = type(found).__name__
            raise UnknownFamily(f"{where} is {article(kind)} {kind}, not a gan_dist Family")
        settings = found.settings
        if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
            raise UnknownFamily(f"{where}: its settings is not a pydantic model class")
        if not (callable(found.build) or isinstance(found.build, str)):
            raise UnknownFamily(f"{where}: its build is not callable")
        return dataclasses.replace(found, label=label, plugin=True)

    def _ambiguous(self, name: str, points: list[metadata.EntryPoint]) -> str:
        both = " and ".join(f"{_dist(p)} ({p.value})" for p in points)
        return (
            f"'{name}': two installed packages declare {article(self.kind)} {self.kind} of this "
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
        packages = _packages_at(_installed()).get(top, [])
        if packages:
            return Provider(packages[0], installed_version(packages[0]))
        return Provider(None, None)

    def unknown(self, name: str, saved: bool = False) -> str:
        """Why `name` names no family, with the closest names. `saved`: the name was read
        from a file gan-dist wrote, which may not name a module: the likely cause is that
        the package providing the family is not installed here."""
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        if saved:
            return (
                f"{shown(name)} is not {article(self.kind)} {self.kind} installed here "
                f"(available: {', '.join(names)}){hint}; install the package that provides "
                f"it (the one the run was trained with), which declares it as a "
                f"gan_dist.{self.kind}s entry point"
            )
        return (
            f"{shown(name)} is not {article(self.kind)} {self.kind}{hint} (available: "
            f"{', '.join(names)}; or a package.module:name reference)"
        )


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


def _installed() -> tuple[tuple[str, int | None], ...]:
    """What the installed packages' metadata depends on: each folder on sys.path and when it
    last changed (an install or uninstall adds or removes a *.dist-info folder there, as
    importlib's own path finder relies on). A process that installs a plugin after it first
    looked, a notebook say, then finds it."""
    key = []
    for entry in sys.path:
        where = os.path.abspath(entry or ".")  # '' and relative entries move with chdir
        try:
            key.append((where, os.stat(where).st_mtime_ns))
        except OSError:
            key.append((where, None))
    return tuple(key)


def _entry_points(group: str) -> dict[str, tuple[metadata.EntryPoint, ...]]:
    """Installed entry points of a group by name; a name several distributions declare
    keeps them all (the same distribution seen twice on the path counts once)."""
    return _entry_points_at(group, _installed())


@lru_cache(maxsize=len(KINDS))
def _entry_points_at(
    group: str, installed: tuple[tuple[str, int | None], ...]
) -> dict[str, tuple[metadata.EntryPoint, ...]]:
    found: dict[str, dict[tuple[str, str], metadata.EntryPoint]] = {}
    for point in metadata.entry_points(group=group):
        owner = point.dist.name if point.dist is not None else ""
        found.setdefault(point.name, {}).setdefault((owner.lower(), point.value), point)
    return {name: tuple(points.values()) for name, points in found.items()}


@lru_cache(maxsize=1)
def _packages_at(installed: tuple[tuple[str, int | None], ...]) -> dict[str, list[str]]:
    """The distributions that provide each top-level module, read once for `installed`:
    reading every package's file list takes 0.4 s with 400 packages, and a recipe naming a
    `module:attribute` family asks several times. Read-only: callers share the dict."""
    return metadata.packages_distributions()


def registry(kind: str) -> Registry:
    """The table of one kind: "generator", "discriminator" or "objective"."""
    return Registry(kind, BUILTINS[kind])
