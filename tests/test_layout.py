"""The house's shape (issue 16, Build 5): no import cycles between gan-dist's modules, the
training package never loads models from the registry (the command that trains registers
and resolves `model.init`), and the CLI starts without heavy modules (test_cli.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import gan_dist

PACKAGE = Path(gan_dist.__file__).parent


def modules() -> dict[str, ast.Module]:
    """Every gan_dist module by its dotted name, parsed."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = ast.parse(
            path.read_text()
        )
    return found


def imported(nodes) -> set[str]:
    """The modules (and `module.name`s) the import statements among `nodes` name."""
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def imports() -> dict[str, set[str]]:
    """gan_dist module -> the gan_dist modules it imports at run time (at the top or inside
    functions; `if TYPE_CHECKING:` blocks are for type checkers only)."""
    graph: dict[str, set[str]] = {}
    for name, tree in modules().items():
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        graph[name] = imported(n for n in ast.walk(tree) if id(n) not in typing_only)
    return {name: {m for m in deps if m in graph and m != name} for name, deps in graph.items()}


def test_training_never_imports_the_model_registry():
    graph = imports()
    for name, deps in graph.items():
        if name.startswith("gan_dist.train"):
            assert "gan_dist.models" not in deps, f"{name} imports gan_dist.models"


def test_the_module_top_levels_have_no_import_cycle():
    """Top-level imports only: a function may import lazily what imports its module."""
    graph = {name: imported(tree.body) for name, tree in modules().items()}
    graph = {n: {d for d in deps if d in graph and d != n} for n, deps in graph.items()}

    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*trail[trail.index(dep) :], dep] if dep in trail else [node, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
