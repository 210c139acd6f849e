"""Checkpoints that resume exactly and load without unpickling.

Layout of `RUN_DIR/checkpoints/step-00000100/`:
  generator.safetensors, discriminator.safetensors, ema.safetensors   weights and buffers
  optimizers.pt      optimiser and grad-scaler state (tensors and numbers only; loaded with
                     torch.load(weights_only=True), which refuses arbitrary objects)
  rank-R.safetensors torch RNG states of rank R (CPU, and CUDA when present)
  rank-R.json        Python/NumPy RNG state, data-stream position, generator sha256 and
                     host name of rank R
  state.json         step, schedulers, world size, resolved recipe, tracking run id, the
                     data's identity (data.identity), lineage, resumes

Every rank writes its own rank files into a hidden `.step-...partial` folder; rank 0 writes
the rest, `state.json` last, and renames the folder when all ranks are done. A crash at any
point leaves the previous checkpoints untouched and no folder that looks complete. The run
directory must be on a filesystem all nodes share.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gan_dist import __version__
from gan_dist.core.errors import GanDistError
from gan_dist.core.files import write_bytes_atomic

log = logging.getLogger("gan_dist.train")

NETS = ("generator", "discriminator", "ema")


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


class CheckpointWriteError(GanDistError):
    """A checkpoint could not be written (a full disk, a lost mount); the previous one is kept."""


def save(
    accelerator,
    run_dir: Path,
    *,
    step: int,
    nets: dict[str, torch.nn.Module],
    optimizers: dict[str, Any],
    rank_state: dict[str, Any],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Collective: every rank must call it at the same step. When any rank fails to write
    its part, every rank raises CheckpointWriteError (naming the path and the free space)
    and the partial folder is removed; earlier checkpoints are untouched."""
    root = checkpoint_dir(run_dir)
    name = f"step-{step:08d}"
    tmp = root / f".{name}.partial"
    rank = accelerator.process_index
    main = accelerator.is_main_process

    def prepare() -> None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def write() -> None:
        _write_rank_files(tmp, rank, rank_state)
        if main:
            for key, net in nets.items():
                sd = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
                save_file(sd, str(tmp / f"{key}.safetensors"))
            torch.save(optimizers, tmp / "optimizers.pt")
            full = {
                "format": "gan-dist-checkpoint",
                "format_version": 1,
                "step": step,
                "gan_dist_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **state,
            }
            (tmp / "state.json").write_text(json.dumps(full, indent=2))

    _on_every_rank(prepare, accelerator, run_dir, tmp)
    _on_every_rank(write, accelerator, run_dir, tmp)

    final = root / name
    if main:
        _check_in_sync(tmp, accelerator.num_processes)
        if final.exists():  # the same step saved again after a resume
            stale = root / f".{name}.old"
            shutil.rmtree(stale, ignore_errors=True)
            final.rename(stale)
            tmp.rename(final)
            shutil.rmtree(stale)
        else:
            tmp.rename(final)
        for old in list_checkpoints(run_dir)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _on_every_rank(work, accelerator, run_dir: Path, tmp: Path) -> None:
    """Run `work` on every rank, then agree (one collective) on whether all succeeded.
    Any failure counts: safetensors and torch.save report a full disk in errors of their own
    kinds, not as OSError."""
    error: Exception | None = None
    try:
        work()
    except Exception as exc:
        error = exc
    flag = torch.tensor([1.0 if error else 0.0], device=accelerator.device)
    if not accelerator.reduce(flag, reduction="sum").item():
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # also frees the space it took
    raise CheckpointWriteError(_write_failure(run_dir, tmp, error, accelerator.process_index))


def _write_failure(run_dir: Path, tmp: Path, error: Exception | None, rank: int) -> str:
    name = tmp.name.removeprefix(".").removesuffix(".partial")
    where = str(checkpoint_dir(run_dir) / name)
    if error is None:
        what = "another rank could not write its part"
    elif isinstance(error, OSError) and error.strerror:
        what = f"{error.strerror} ({error.filename or tmp})"
    else:
        what = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    try:
        free = f"{shutil.disk_usage(checkpoint_dir(run_dir)).free / 2**20:.1f} MB free there"
    except OSError:
        free = "free space unknown"
    kept = list_checkpoints(run_dir)
    previous = f"the previous checkpoint {kept[0]} is kept" if kept else "no earlier checkpoint"
    return (
        f"rank {rank}: could not write checkpoint {where}: {what}; {free}; {previous}. "
        "Free some space and run the same command to resume"
    )


def digest(net: torch.nn.Module) -> str:
    """sha256 of the parameters: equal on every rank while data parallelism works."""
    h = hashlib.sha256()
    for p in net.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_in_sync(folder: Path, world: int) -> None:
    digests = {
        json.loads((folder / f"rank-{r}.json").read_text())["generator_sha256"]
        for r in range(world)
    }
    if len(digests) > 1:
        log.warning(
            "generator weights differ between ranks (%d distinct); the checkpoint holds rank 0's",
            len(digests),
        )


def _write_rank_files(folder: Path, rank: int, rank_state: dict[str, Any]) -> None:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    save_file(tensors, str(folder / f"rank-{rank}.safetensors"))
    py_state = random.getstate()
    np_state = np.random.get_state()
    doc = {
        "python_random": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_random": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        **rank_state,
    }
    (folder / f"rank-{rank}.json").write_text(json.dumps(doc))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, newest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)


def newest_step(run_dir: Path) -> tuple[Path | None, int]:
    """The newest complete checkpoint and its step, from its state.json alone (quick, for a
    status line; `resolve` is what checks a checkpoint before use); (None, 0) if none."""
    for path in list_checkpoints(run_dir):
        try:
            return path, int(json.loads((path / "state.json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None, 0


def read(path: Path) -> Checkpoint:
    """Check a checkpoint is whole and readable without unpickling; raise GanDistError."""
    try:
        state = json.loads((path / "state.json").read_text())
        if state.get("format") != "gan-dist-checkpoint":
            raise ValueError("state.json is not a gan-dist checkpoint")
        for key in NETS:
            load_file(str(path / f"{key}.safetensors"))
        torch.load(path / "optimizers.pt", weights_only=True, map_location="cpu")
        world = int(state["world_size"])
        for rank in range(world):
            json.loads((path / f"rank-{rank}.json").read_text())
            load_file(str(path / f"rank-{rank}.safetensors"))
    except Exception as exc:  # any damage makes it unusable; the message says which file
        raise GanDistError(f"checkpoint {path} is unusable: {exc}") from None
    return Checkpoint(path, state)


def resolve(run_dir: Path, resume: str) -> Checkpoint | None:
    """`auto`: the newest usable checkpoint (skipping damaged ones with a warning), or None;
    `none`: start fresh (refused if the run already has checkpoints); else a path."""
    if resume == "none":
        found = list_checkpoints(run_dir)
        if found:
            raise GanDistError(
                f"{run_dir} already holds checkpoints ({found[0].name} ...); resume with "
                "--resume auto, or choose another --run-dir"
            )
        return None
    if resume == "auto":
        for path in list_checkpoints(run_dir):
            try:
                return read(path)
            except GanDistError as exc:
                log.warning("%s; trying an older one", exc)
        return None
    return read(Path(resume))


COMPILED = "_orig_mod"  # the attribute (and state-dict key part) torch.compile wraps a net in


def plain(net: torch.nn.Module) -> torch.nn.Module:
    """The net itself, out of its DDP (or other data-parallel) wrapper and its torch.compile
    wrapper, in whichever order they were put on: the module whose state dict has the
    net's own names, which is what a checkpoint must hold (a `train.compile: false` run and
    the exported model read them)."""
    from accelerate.utils import extract_model_from_parallel

    net = extract_model_from_parallel(net, keep_torch_compile=False)
    while isinstance(getattr(net, COMPILED, None), torch.nn.Module):  # compiled, then DDP
        net = extract_model_from_parallel(getattr(net, COMPILED), keep_torch_compile=False)
    return net


def without_compiled_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with torch.compile's `_orig_mod.` key parts removed: checkpoints of
    `train.compile: true` runs written before gan-dist saved the plain nets carry them
    (`_orig_mod.body.0.weight` for `body.0.weight`)."""
    return {
        ".".join(part for part in key.split(".") if part != COMPILED): value
        for key, value in state.items()
    }


def load_weights(ckpt_path: Path, key: str) -> dict[str, torch.Tensor]:
    """One net's weights and buffers from a checkpoint folder (`key`: one of NETS), under
    the net's own names (see `without_compiled_names`); on the CPU."""
    return without_compiled_names(load_file(str(ckpt_path / f"{key}.safetensors")))


def load_nets(ckpt: Checkpoint, nets: dict[str, torch.nn.Module]) -> None:
    """Load each saved net into the recipe's; raises GanDistError when one does not fit."""
    for key, net in nets.items():
        try:
            net.load_state_dict(load_weights(ckpt.path, key))
        except RuntimeError as exc:
            # torch's first line is a bare header ("Error(s) in loading state_dict for X:")
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
            raise GanDistError(
                f"{ckpt.path}: the saved {key} does not fit the recipe's model ({detail}); "
                "model settings that shape the nets (model.*, data.channels) must match the "
                "run being resumed: start a new run from it with model.init instead"
            ) from None


def load_optimizers(ckpt: Checkpoint) -> dict[str, Any]:
    return torch.load(ckpt.path / "optimizers.pt", weights_only=True, map_location="cpu")


def load_rank_state(ckpt: Checkpoint, rank: int) -> dict[str, Any]:
    """This rank's saved state: RNG states (for `restore_rng`) and its data position."""
    tensors = load_file(str(ckpt.path / f"rank-{rank}.safetensors"))
    doc = json.loads((ckpt.path / f"rank-{rank}.json").read_text())
    doc["torch_cpu"] = tensors["torch_cpu"]
    doc["torch_cuda"] = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    return doc


def restore_rng(doc: dict[str, Any]) -> None:
    torch.set_rng_state(doc["torch_cpu"])
    cuda = doc["torch_cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = doc["python_random"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = doc["numpy_random"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


RECIPE_FILE = "recipe.yaml"  # in RUN_DIR: the recipe `gan-dist train` ran


def write_recipe(run_dir: Path, text: str) -> Path:
    path = run_dir / RECIPE_FILE
    write_bytes_atomic(path, text.encode())
    return path
