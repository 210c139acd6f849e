"""What a resume may change, compared with the recipe the checkpoint ran with.

A run is its data, nets, objective, seed and starting weights ("what the run is"): a resume
that changes any of those would quietly train another run on top of this one, so it is
refused, naming every changed field, unless the user asks for it (`--resume-changed`).
The data is compared by what it is (`gan_dist.data.identity`), not by the recipe's text:
`./shards/` for `shards` is no change; `shards` naming another pack (typed in another
directory, or packed again in place) is one.
How the run goes on (its budget, cadence, hardware, tracking, and the optimiser's rates) may
change: `HOW_IT_RUNS` lists those fields. Either way every change is recorded, in the
checkpoint's state and as tags of the MLflow run, so the run says what it did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan_dist.config.recipe import SAVED, Recipe, validate_recipe
from gan_dist.core.errors import GanDistError, RecipeError
from gan_dist.data.identity import identity_change

# Dotted fields (and sections) a resume may change. Every other field, a field added later
# included until it is listed here, is part of what the run is.
HOW_IT_RUNS = (
    "description",
    # the effective batch already follows the number of processes, which a resume may
    # change; a smaller machine needs a smaller batch (and more grad_accum)
    "data.batch_size",
    "data.workers",
    "data.shuffle_buffer",
    "data.stall_timeout_s",
    "data.allow_shell",
    # rates and clipping: lowering the lr after a blow-up and resuming must work
    *(
        f"optim.{net}.{key}"
        for net in ("generator", "discriminator")
        for key in ("lr", "betas", "weight_decay")
    ),
    "optim.schedule",
    "optim.grad_clip",
    "train",  # budget (max_steps, max_minutes), precision, cadence, EMA decay, profiling
    "tracking",
    "launch",
)
FLAG = "--resume-changed"
UNSET = object()  # a field one of the two recipes does not have
DATA = {"data.train": "train", "data.val": "val"}  # compared by identity, keyed as recorded
PREDATES = "the checkpoint predates gan-dist's record of its data's identity: text compared"
URIS = ("models:/", "runs:/")


def how_it_runs(path: str) -> bool:
    """Whether a resume may change the field at dotted `path` (e.g. `train.max_steps`)."""
    return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in HOW_IT_RUNS)


@dataclass(frozen=True)
class Change:
    """One field a resume changes: its dotted path, the value the run had and the new one,
    and for data, how the data itself differs (`why`: its text may not)."""

    path: str
    old: Any
    new: Any
    why: str = ""

    @property
    def allowed(self) -> bool:
        return how_it_runs(self.path)

    @property
    def tag(self) -> str:
        """The path as an MLflow key (letters, digits, `_ - . / :` and spaces only)."""
        return self.path.replace("[", ".").replace("]", "")

    @property
    def values(self) -> list[Any]:
        """[old, new] as JSON (an unset side is null), and `why` when there is one, as
        checkpoints record them: `Change(path, *values)` is the change again."""
        pair = [None if v is UNSET else v for v in (self.old, self.new)]
        return [*pair, self.why] if self.why else pair

    def __str__(self) -> str:
        said = f"{self.path} {_show(self.old)} -> {_show(self.new)}"
        return f"{said} ({self.why})" if self.why else said


class ChangedRun(GanDistError):
    """The recipe changes what the resumed run is. Raised before anything in the run dir
    is written: the run, its recipe.yaml and status stay as they were."""


def _show(value: Any) -> str:
    if value is UNSET:
        return "(unset)"
    return value if isinstance(value, str) else json.dumps(value)


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted path: value} of every scalar in a dumped recipe; lists by index (`[0]`)."""
    if isinstance(tree, dict):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in tree.items()]
    elif isinstance(tree, list):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(tree)]
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for path, value in items:
        out.update(_leaves(value, path))
    return out


def _as_ran(saved: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's recipe with this version's defaults filled in, so a field added
    since it was written does not count as changed; as written where it no longer
    validates here."""
    try:
        return validate_recipe(saved, context=SAVED).model_dump(mode="json")
    except RecipeError:
        return saved


def changes(
    saved: dict[str, Any],
    recipe: Recipe,
    data_was: dict[str, Any] | None = None,
    data_is: dict[str, Any] | None = None,
) -> list[Change]:
    """Every field in which `recipe` differs from the checkpoint's recipe `saved` (as
    `state.json` holds it), in the recipe's order.

    `data_is`: the identities of the data `recipe` names ({"train", "val"}, see
    `data.identity.data_identity`); `data_was`: those the checkpoint recorded. Given both,
    data.train and data.val change when their identities differ, whatever their text (the
    change says how, in `why`). Given `data_is` alone (a checkpoint written before
    identities were recorded), their text is compared and a change says so."""
    old, new = _leaves(_as_ran(saved)), _leaves(recipe.model_dump(mode="json"))
    paths = [*new, *(p for p in old if p not in new)]
    data_was = data_was if isinstance(data_was, dict) else None  # a hand-edited state.json
    found = []
    for path in paths:
        was, now = old.get(path, UNSET), new.get(path, UNSET)
        if path in DATA and data_was is not None and data_is is not None:
            split = DATA[path]
            why = identity_change(data_was.get(split), data_is.get(split), split)
            same_pack = all(ids.get("val") == ids.get("train") for ids in (data_was, data_is))
            if why and split == "val" and same_pack and any(c.path == "data.train" for c in found):
                why = "as data.train"  # data.val auto: the train pack's val split
            if why:
                found.append(Change(path, was, now, why))
        elif was != now:
            predates = path in DATA and data_is is not None
            found.append(Change(path, was, now, PREDATES if predates else ""))
    return found


def same_init(asked: str, started_from: str, lineage: dict[str, str]) -> bool:
    """Whether model.init `asked` names the source a run started from: `started_from` as
    its recipe held it, `lineage` the checkpoint's (`init`: a local source's resolved
    path, `parent`: the version a models:/ alias resolved to). Local paths are compared
    resolved (`runs/base` from the run's directory is its absolute path); models:/ and
    runs:/ URIs as text, a models:/NAME/VERSION also with the version recorded."""
    if asked.startswith(URIS):
        named = {started_from, lineage.get("init")}
        if asked.startswith("models:/"):
            named.add(lineage.get("parent"))
        return asked in named
    if started_from.startswith(URIS):
        return False
    return Path(asked).resolve() == Path(lineage.get("init") or started_from).resolve()


def check_resume(
    saved: dict[str, Any],
    recipe: Recipe,
    ckpt_path: Path,
    step: int,
    allow_changed: bool,
    *,
    lineage: dict[str, str] | None = None,
    data_was: dict[str, Any] | None = None,
    data_is: dict[str, Any] | None = None,
) -> tuple[Recipe, list[Change]]:
    """The recipe to resume with, and the changes to record (see `changes` for `data_was`
    and `data_is`; `lineage`: the checkpoint's, see `same_init`).

    `model.init` only starts a fresh run: one set to a source the run did not start from is
    refused even with `allow_changed`, as it could not be honoured; one left out, or naming
    the run's own another way, is the run's own (it still started from it). Any other
    change of what the run is raises ChangedRun naming each field, old -> new, unless
    `allow_changed`."""
    lineage = lineage or {}
    started_from = (saved.get("model") or {}).get("init")
    asked = recipe.model.init
    own = asked is None or (started_from is not None and same_init(asked, started_from, lineage))
    if own and started_from is not None and asked != started_from:
        dumped = recipe.model_dump(mode="json")
        dumped["model"]["init"] = started_from
        recipe = validate_recipe(dumped)
    found = changes(saved, recipe, data_was, data_is)
    others = ", ".join(str(c) for c in found if c.path != "model.init" and not c.allowed)
    fresh = "start a fresh run in another folder (--run-dir NEW)"
    if not own:
        origin = lineage.get("init") or started_from or "random weights"
        if lineage.get("parent", origin) != origin and origin.startswith("models:/"):
            origin += f" ({lineage['parent']})"
        also = f" (it also changes {others})" if others else ""
        raise ChangedRun(
            f"model.init: {asked}: {ckpt_path} holds a run at step {step} that started "
            f"from {origin}; a resumed run continues from its checkpoint, so model.init "
            f"cannot apply{also}. To fine-tune from {asked}, {fresh}"
        )
    if others and not allow_changed:
        raise ChangedRun(
            f"{ckpt_path} (step {step}) ran another recipe: this one changes what the run "
            f"is: {others}. Resume with the settings it ran with, pass {FLAG} to continue "
            f"it with the new ones, or {fresh}"
        )
    return recipe, found


def as_ran(saved: dict[str, Any], recipe: Recipe) -> Recipe:
    """The recipe a run already complete is shown with: the one it ran with (the
    checkpoint's `saved`), with `recipe`'s tracking section, which this command tracks and
    registers with; `recipe` itself where the saved one no longer validates here."""
    dumped = _as_ran(saved) | {"tracking": recipe.tracking.model_dump(mode="json")}
    try:
        return validate_recipe(dumped, context=SAVED)
    except RecipeError:
        return recipe
