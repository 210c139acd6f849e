"""Text files we parse from users and strangers (recipes, damage files, model spec.json):
bounded before they are parsed, and bounded after.

- A size limit before anything is read into memory (a 50 MB recipe is not a recipe).
- UTF-8 or a one-line error naming the file and the first bad byte.
- YAML aliases can make a 573-byte file expand into billions of values (the "billion
  laughs"): PyYAML builds the aliases as shared references, so the parsed object is small,
  but anything walking it (validation, an error message) expands it. `check_bounded` counts
  the values the object stands for, shared references counted every time, and refuses
  anything over a limit, nesting deeper than a limit, or a self-containing object.
- Error messages quote at most a short excerpt of a value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gan_dist.core.errors import GanDistError

MAX_TEXT_BYTES = 1_000_000  # recipes are a few kB; spec.json likewise
MAX_VALUES = 100_000  # values a parsed file may stand for, aliases expanded
MAX_DEPTH = 64  # nesting of mappings and lists
EXCERPT_CHARS = 80


class UntrustedTextError(GanDistError):
    """A text file (or a parsed value) over one of the limits above, or not UTF-8."""


def read_text_file(path: Path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The file's text. Raises UntrustedTextError naming `path` when it is larger than
    `limit` bytes or not UTF-8, OSError when it cannot be read."""
    size = path.stat().st_size
    if size > limit:
        raise UntrustedTextError(
            f"{path}: {size:,} bytes, over the {limit:,}-byte limit for {what}; is it the "
            "right file?"
        )
    data = path.read_bytes()[: limit + 1]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedTextError(
            f"{path}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}); "
            f"save {what} as UTF-8"
        ) from None


def check_bounded(value: Any, source: str) -> None:
    """Raise UntrustedTextError when `value` (parsed YAML or JSON) stands for more than
    MAX_VALUES values with shared references expanded, nests deeper than MAX_DEPTH, or
    contains itself."""
    sizes: dict[int, int] = {}

    def size(node: Any, depth: int, path: frozenset[int]) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if depth > MAX_DEPTH:
            raise UntrustedTextError(f"{source}: nested deeper than {MAX_DEPTH} levels")
        key = id(node)
        if key in path:
            raise UntrustedTextError(f"{source}: a value contains itself (a recursive alias)")
        if key not in sizes:
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            inner = path | {key}
            total = 1
            for child in children:
                total += size(child, depth + 1, inner)
                if total > MAX_VALUES:
                    raise UntrustedTextError(
                        f"{source}: stands for over {MAX_VALUES:,} values once its YAML "
                        "aliases are expanded; write the values out, or fewer of them"
                    )
            sizes[key] = total
        return sizes[key]

    size(value, 0, frozenset())


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """repr(value) cut to `limit` characters, for error messages; never expands a huge or
    aliased value in full (the repr of a container is built from bounded parts)."""
    if isinstance(value, dict):
        text = (
            "{"
            + ", ".join(f"{excerpt(k, 20)}: ..." for k in list(value)[:3])
            + (", ...}" if len(value) > 3 else "}")
        )
    elif isinstance(value, (list, tuple)):
        text = f"[{len(value)} items]"
    elif isinstance(value, (str, bytes)):
        text = repr(value[: limit + 1])
    else:
        try:
            text = repr(value)
        except ValueError:  # an int too long to print (Python's digit limit)
            text = f"<a {type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
