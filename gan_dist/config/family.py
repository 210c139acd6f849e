"""What a family is: the typed settings a recipe gives it, how to build it, and which
package provided it (`Family`, `Settings`, `Provider`), and the errors a lookup raises. The
built-in families are in `catalogue.py`; `families.py` finds a name among them and installed
plugins. Nothing here imports torch."""

from __future__ import annotations

import importlib
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from gan_dist.core.errors import GanDistError
from gan_dist.core.textfiles import excerpt
from gan_dist.run.signals import from_outside


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
        `build(settings) -> gan_dist.train.losses.Adversarial`. The arguments are passed by
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
            return self.run("its builder reference", resolve_reference, self.build)
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


def import_plugin(load: Callable[[], Any], where: str) -> Any:
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
    ours = [Path(__file__).parents[1]]  # gan_dist itself
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


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def resolve_reference(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    target: Any = importlib.import_module(module)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportError(f"{module} has no attribute {attribute}") from None
    return target


def installed_version(package: str | None) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    if package is None:
        return None
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
