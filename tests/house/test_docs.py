"""The README is a guide and `docs/` the reference (issue 26): the README stays short and
gives exactly the two commands (the test one is `.ci/run`'s), every page starts with what it
is for, every link and anchor resolves, and every command shown either parses with its
program's own parser as written (gan-dist, mlflow, accelerate: a renamed option or command
fails here, not in a user's terminal) or is run as written by the test `RUN_BY_TESTS`
names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from gan_dist.cli import app

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300


def blocks(path: Path) -> list[str]:
    """The shell code blocks of a markdown page."""
    return re.findall(r"```(?:bash|sh|console)\n(.*?)\n```", path.read_text(), re.S)


def commands(path: Path) -> list[str]:
    """Every command in a page's shell blocks, continuation lines joined, comments and
    here-documents (a script fed to `python -`) dropped."""
    found = []
    for block in blocks(path):
        block = re.sub(r"<<'(\w+)'\n.*?\n\1(\n|$)", "\n", block, flags=re.S)
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for part in re.split(r"&&|;|\|", line):
                if part.strip() and not part.strip().startswith("#"):
                    found.append(part.strip())
    return found


# commands the pages show that a test runs as written, instead of a parser checking them
RUN_BY_TESTS = {
    "python3": ".ci/run and tests/cli/test_cli.py (the README's two commands)",
    ".venv/bin/pip": ".ci/run and tests/cli/test_cli.py",
    ".venv/bin/ruff": ".ci/run",
    ".venv/bin/python": ".ci/run",
    "python": "tests/repair/test_serving.py (the serving request, as written)",
    "curl": "tests/repair/test_serving.py (the serving request, as written)",
}


def check(line: str) -> None:
    """A command as a page shows it, parsed by the parser of the program it runs (gan-dist's
    typer, MLflow's click, Accelerate's argparse), without running it; raises the parser's
    error (UsageError, SystemExit) for what the program does not take."""
    words = shlex.split(line)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before a command
        words = words[1:]
    head = words[0].removeprefix(".venv/bin/")
    if head == "gan-dist":
        parse(" ".join(shlex.quote(w) for w in words))
    elif head == "mlflow":
        from mlflow.cli import cli

        parse(" ".join(shlex.quote(w) for w in words), cli)
    elif head == "accelerate" and words[1] == "launch":
        from accelerate.commands.launch import launch_command_parser

        given = launch_command_parser().parse_args(words[2:])
        if given.module and given.training_script == "gan_dist":
            parse(" ".join(["gan-dist", *map(shlex.quote, given.training_script_args)]))
    else:
        assert words[0] in RUN_BY_TESTS, f"no test or parser checks `{line}`"


def parse(line: str, root=None) -> None:
    """Parse a command line with its program's own click parser (`root`; gan-dist's typer
    app when None), down to the command it names, without running it; raises the parser's
    UsageError for an unknown command or option, or a missing argument."""
    args = [a.strip("[]") for a in shlex.split(line)[1:] if a not in ("[", "]")]
    command = root if root is not None else typer.main.get_command(app)
    parent = None
    while True:
        ctx = command.make_context(command.name, args, parent=parent, resilient_parsing=False)
        if not hasattr(command, "resolve_command"):  # a command, not a group
            return
        rest = [*ctx._protected_args, *ctx.args]
        _, command, args = command.resolve_command(ctx, rest)
        parent = ctx


def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_readme_is_a_short_guide_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"```bash\n{ci}\n```" in text, "the README's test command is not .ci/run's"
    demo = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/gan-dist demo"
    assert f"```bash\n{demo}\n```" in text
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in text, f"the README does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda p: p.name)
def test_each_reference_page_starts_with_what_it_is_for(page):
    first, _, lead = page.read_text().split("\n", 3)[:3]
    assert first.startswith("# ") and lead.startswith("What this page is for:"), page.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_and_anchor_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            assert anchor in {slug(h) for h in headings}, f"{page.name}: no heading #{anchor}"


@pytest.mark.parametrize("line", [c for p in PAGES for c in commands(p)], ids=lambda c: c[:60])
def test_every_command_shown_parses_or_is_run_by_a_test(line):
    check(line)


def test_a_stale_option_fails_the_parse():
    """The check above can fail: an option the CLI does not have is a usage error."""
    from typer._click.exceptions import UsageError  # typer's own click, not the package

    with pytest.raises(UsageError, match="--no-such-option"):
        parse("gan-dist repair in/ out/ --model m --no-such-option 3")
    with pytest.raises(UsageError, match="pakc"):
        parse("gan-dist data pakc in/ out/")
    with pytest.raises(Exception, match="--no-such"):  # MLflow's own click
        check("mlflow models serve -m models:/x@champion --no-such 1")
    with pytest.raises(SystemExit):  # Accelerate's argparse
        check("accelerate launch --num_processez 2 -m gan_dist train quickstart")
    with pytest.raises(UsageError):  # gan-dist's part of an accelerate command
        check("accelerate launch --num_processes 2 -m gan_dist trian quickstart")
    with pytest.raises(AssertionError, match="no test or parser"):
        check("sbatch job.sbatch")
