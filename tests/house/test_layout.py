"""The house's shape (issues 16 and 26): layers you can see in `ls gan_dist/`, every import
pointing down them (so training never loads models from the registry: the command that
trains registers and resolves `model.init`), no import cycle, and the CLI starts without
heavy modules (test_cli.py)."""

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


# Layers from the bottom up: a module may import from its own layer and those below it.
LAYERS = (
    "gan_dist",  # the package root: __version__ only
    "core",  # leaves: errors, files, pixels, text, precision, filters, classical prefills
    "run",  # the run-directory protocol: status, run lock, signals, checkpoints
    "config",  # recipes and the families they name
    "data",
    "nets",
    "metrics",
    "tracking",
    "train",
    "repair",  # model files, the model registry, tiles, files, serving
    "launch",
    "cli",
    "__main__",
)
# few-line re-exports kept at the root for plugins and registered models that import the
# names from before the layers (issue 26); nothing inside gan_dist may import them
COMPAT = {"registry", "objectives", "models", "repair_files", "serving"}


def layer(module: str) -> int:
    """Index in LAYERS of a gan_dist module's layer."""
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "gan_dist")


def test_the_root_holds_only_packages_and_the_kept_re_exports():
    found = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert found <= COMPAT, f"modules at the root of gan_dist/: {sorted(found - COMPAT)}"
    for name in found:
        lines = (PACKAGE / f"{name}.py").read_text().strip().splitlines()
        assert len(lines) <= 12, f"gan_dist/{name}.py is more than a re-export"
    layers = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert layers == set(LAYERS) - {"gan_dist", "__main__"}, sorted(layers)


def test_every_import_points_down_the_layers():
    """At the top of a module or inside a function: a lazy import upwards is still an arrow
    that makes a layer depend on the one above it."""
    wrong = []
    for name, deps in imports().items():
        if name.split(".")[-1] in COMPAT and name.count(".") == 1:
            continue
        for dep in deps:
            if dep.count(".") == 1 and dep.split(".")[1] in COMPAT:
                wrong.append(f"{name} imports the re-export {dep}")
            elif layer(dep) > layer(name):
                wrong.append(f"{name} ({LAYERS[layer(name)]}) imports {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_modules_have_no_import_cycle():
    """Function-level imports included: a cycle through a lazy import is still two modules
    that cannot be understood, or moved, one without the other."""
    graph = imports()
    graph = {n: {d for d in deps if d in graph} for n, deps in graph.items()}
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


def test_the_tests_mirror_the_package():
    tests = Path(__file__).parents[1]
    allowed = (set(LAYERS) - {"gan_dist", "__main__"}) | {"house"}
    for path in tests.rglob("test_*.py"):
        where = path.relative_to(tests).parts
        assert len(where) == 2 and where[0] in allowed, f"tests/{'/'.join(where)}"


SPAWNS = ("run_cli(", "pack_cli(", "train_quickstart(", "subprocess.", "Popen(")


def test_a_test_that_starts_a_process_is_marked_integration():
    """`pytest -m "not integration"` is the inner loop: a test that starts the CLI or any
    other process in its own body belongs to the integration tests (issue 26)."""
    unmarked = []
    for path in sorted(Path(__file__).parents[1].rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        if any(
            isinstance(n, ast.Assign)
            and "pytestmark" in ast.unparse(n)
            and "integration" in ast.unparse(n)
            for n in tree.body
        ):
            continue
        functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        helpers = [  # fixtures are not called by name: a test takes them as arguments
            f
            for f in functions
            if not f.name.startswith("test_")
            and not any("fixture" in ast.unparse(d) for d in f.decorator_list)
        ]
        spawns = set(SPAWNS)
        while True:  # the file's own helpers that start one (`launch(...)`), to a fixed point
            more = {f"{f.name}(" for f in helpers if any(s in ast.unparse(f) for s in spawns)}
            if more <= spawns:
                break
            spawns |= more
        for node in functions:
            if not node.name.startswith("test_"):
                continue
            marked = any("integration" in ast.unparse(d) for d in node.decorator_list)
            if not marked and any(s in ast.unparse(node) for s in spawns):
                unmarked.append(f"{path.name}::{node.name}")
    assert not unmarked, "start a process but are not marked integration: " + ", ".join(unmarked)
