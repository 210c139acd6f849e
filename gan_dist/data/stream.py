"""Per-rank streaming of packed shards into batches of float tensors.

Training reads *resampled* shards (an endless stream, stopped by step count), because
splitting a finite shard list over ranks gives ranks different numbers of batches and DDP
then hangs at the epoch end. Validation reads a finite pass, each rank its own shards.
The loader is deliberately not handed to `accelerator.prepare()`, which would re-shard it.

Every reader of the data (a rank, or one DataLoader worker of a rank: a *slot*) owns its own
part of it: whole shards when there are at least as many shards as slots, else every
`slots`-th sample of each shard. So no two ranks or workers ever hand out the same sample in
step, whatever the number of shards (one included), and a finite pass sees every sample
exactly once. Each slot's order is drawn from (seed, slot), so a stream is reproducible and a
resumed one continues exactly.

A batch is a dict: `damaged` and `clean` (B, C, H, W) in [-1, 1], `mask` (B, 1, H, W) with
1 = missing pixel, and `key` (list of sample keys). Broken samples or shards are skipped
with a warning naming the shard (at most one line per shard a minute), and counted
(`ShardStream.skipped`), also across workers. A training stream that can read nothing for
`stall_timeout_s` while every one of its shards failed twice raises `DataStalled` instead of
retrying for ever.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import random
import re
import signal
import sys
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypedDict

import numpy as np
import torch
import webdataset as wds

from gan_dist.core.errors import GanDistError
from gan_dist.core.pixels import to_signed
from gan_dist.data.damage import apply_damage, sample_rng
from gan_dist.data.images import CODECS, decode_part, sample_part
from gan_dist.data.pack import read_manifest

log = logging.getLogger("gan_dist.data")


def shard_urls(spec: str, split: str = "train", allow_shell: bool = False) -> list[str]:
    """A packed folder (its manifest lists the split's shards), or a brace pattern of local
    paths, fsspec URLs (s3://, gs://, https://, ...) or, with `allow_shell`, pipe: commands.
    Raises GanDistError for missing local shards and for a pipe: URL not allowed."""
    path = Path(spec)
    if path.is_dir():
        manifest = read_manifest(path)
        urls = [str(path / s["name"]) for s in manifest["shards"] if s["split"] == split]
        if not urls:
            raise GanDistError(f"{path}: the manifest lists no {split} shards")
        return urls
    urls = list(wds.shardlists.expand_urls(spec))
    if not allow_shell and any(u.startswith("pipe:") for u in urls):
        raise GanDistError(
            f"{spec}: a pipe: URL runs a shell command; set data.allow_shell: true to allow it"
        )
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing and urls == [spec]:  # one name, not a pattern: a folder or a file not there
        what = "shard file" if spec.endswith(".tar") else "folder of packed shards"
        raise GanDistError(
            f"{spec}: no such {what}{_near(path)}; pack images into one with "
            f"`gan-dist data pack IMAGES {spec}`"
        )
    if missing:
        raise GanDistError(
            f"{spec}: {len(missing)} of the {len(urls)} shards it names do not exist "
            f"(first: {missing[0]})"
        )
    return urls


def _near(path: Path) -> str:
    """`(did you mean 'x'?)` for a sibling whose name is close to a missing path's."""
    import difflib

    parent = path.parent if path.parent.is_dir() else None
    names = [p.name for p in parent.iterdir()] if parent is not None else []
    close = difflib.get_close_matches(path.name, names, n=1)
    return f" (did you mean {str(path.with_name(close[0]))!r}?)" if close else ""


def check_shards(
    spec: str,
    channels: int,
    image_size: int,
    field: str,
    split: str = "train",
    allow_shell: bool = False,
) -> None:
    """Fail before training if the shards do not match the recipe: a mismatch would make
    every sample undecodable and an endless stream skip forever."""
    path = Path(spec)
    if path.is_dir():
        try:
            manifest = read_manifest(path)
        except GanDistError as exc:
            raise GanDistError(f"{field}: {exc}") from None
        found = (manifest["channels"], manifest["image_size"])
    else:
        try:
            urls = shard_urls(spec, split, allow_shell)
        except GanDistError as exc:
            raise GanDistError(f"{field}: {exc}") from None
        local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
        if not local:
            return
        found = _first_sample_shape(Path(local[0]))
    if found != (channels, image_size):
        raise GanDistError(
            f"{field}: {spec} holds {found[1]} px, {found[0]}-channel samples but the recipe "
            f"says data.image_size={image_size}, data.channels={channels}; re-pack the images "
            "or change the recipe"
        )


def check_slots(spec: str, slots: int, field: str) -> None:
    """Fail before training when a pack has fewer training samples than readers (ranks x
    data workers): a reader with no sample of its own would stall."""
    path = Path(spec)
    if not (path / "manifest.json").is_file():
        return
    samples = int(read_manifest(path)["counts"].get("train", 0))
    if samples < slots:
        raise GanDistError(
            f"{field}: {spec} holds {samples} training sample(s), fewer than the {slots} "
            "readers (ranks x data.workers) that each need samples of their own; pack more "
            "images or crops, or lower data.workers"
        )


def pack_of(spec: str) -> Path | None:
    """The packed folder (one with manifest.json) that a shard spec names or lies in."""
    path = Path(spec)
    if (path / "manifest.json").is_file():
        return path
    if "://" in spec or spec.startswith("pipe:"):
        return None
    parents = {Path(u).parent for u in wds.shardlists.expand_urls(spec)}
    if len(parents) == 1 and (folder := parents.pop()).joinpath("manifest.json").is_file():
        return folder
    return None


def check_data(data: Any, readers: int | None = None) -> str | None:
    """A recipe's `data` section checked before anything is written: its train (and val)
    shards exist and match its channels and size (`check_shards`), and, given the readers
    (ranks x data workers), there are enough training samples for them (`check_slots`).
    Returns what to validate on (`validation_shards`). Raises GanDistError naming the field."""
    check_shards(
        data.train, data.channels, data.image_size, "data.train", "train", data.allow_shell
    )
    if readers is not None:
        check_slots(data.train, readers, "data.train")
    val = validation_shards(data.train, data.val)
    if val:
        check_shards(val, data.channels, data.image_size, "data.val", "val", data.allow_shell)
    return val


def validation_shards(train: str, val: str | None) -> str | None:
    """What to validate on: `val` as given, None when it is null, and for "auto" the val
    split of the pack that `train` names (None when that pack has no val split)."""
    if val != "auto":
        return val
    pack = pack_of(train)
    if pack is None:
        return None
    has_val = any(s["split"] == "val" for s in read_manifest(pack)["shards"])
    return str(pack) if has_val else None


def _first_sample_shape(path: Path) -> tuple[int, int]:
    """(channels, size) of the shard's first decodable clean image; a bad sample is skipped
    here as training skips it, a shard with none is an error naming the last problem."""
    import tarfile

    problem, cleans = None, {f"clean.{ext}" for ext, *_ in CODECS.values()}
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                part = member.name.partition(".")[2]
                if part in cleans:
                    try:
                        arr = decode_part(part, tar.extractfile(member).read())
                    except ValueError as exc:
                        problem = f"sample {member.name.partition('.')[0]}: {exc}"
                        continue
                    return arr.shape[2], arr.shape[0]
    except (tarfile.TarError, OSError) as exc:
        raise GanDistError(f"{path}: unreadable shard ({exc})") from None
    if problem:
        raise GanDistError(f"{path}: no decodable clean image in the shard (last: {problem})")
    raise GanDistError(f"{path}: no clean.png in the shard; is it a gan-dist shard?")


class DataStalled(GanDistError):
    """A training stream read no sample for a bounded time while every shard failed."""


@dataclass
class StreamConfig:
    batch_size: int
    channels: int
    train: bool = True
    workers: int = 0
    shuffle_buffer: int = 1000
    seed: int = 0
    # resume: samples each DataLoader worker already handed out (see ShardStream.position)
    skip: dict[int, int] | None = None
    # model.prefill, taken from the pack where it solved it for the sample's holes, else
    # computed here (in the DataLoader workers, beside a CPU training step) instead of in the
    # generator's forward; batches then carry it as `start`
    prefill: str = "none"
    # random flips and quarter turns of each training sample (data.augment)
    augment: bool = False
    # data.damage steps to draw anew for each training sample (data.fresh_damage); None:
    # the damage packed with it
    fresh_damage: list | None = None
    # this process's rank and the number of ranks; None: from torch.distributed or $RANK
    rank: int | None = None
    world: int | None = None
    # a training stream that decodes nothing this long, every shard failing twice, raises
    stall_timeout_s: float = 60.0
    # data.allow_shell: pipe: URLs may run their shell command
    allow_shell: bool = False


WARN_INTERVAL_S = 60.0  # at most one warning line per shard in this time
BLOCKED_READ_FACTOR = 2.0  # x data.stall_timeout_s: the longest wait for one batch


class _SkipLog:
    """webdataset's exception handler: warn with the shard's name, count, carry on.

    A missing or broken shard fails again at every visit; the log gets one line per shard a
    minute, with the number of failures kept quiet since, so a run cannot fill a disk with
    its own warnings."""

    def __init__(self) -> None:
        self.count = 0
        self.last_error: str | None = None
        self._last: tuple[str, str] | None = None
        self._quiet: dict[str, tuple[float, int]] = {}  # shard -> (last warned, failures since)

    def __call__(self, exn: Exception) -> bool:
        event = (_shard_of(exn), _reason_of(exn))
        if event == self._last:  # a broken tar stream is handed over at two levels
            return True
        self._last = event
        self.count += 1
        self.last_error = "{}: {}".format(*event)
        shard, now = event[0], time.monotonic()
        warned, since = self._quiet.get(shard, (-math.inf, 0))
        if now - warned < WARN_INTERVAL_S:
            self._quiet[shard] = (warned, since + 1)
            return True
        more = f" (and {since} more failures in this shard since the last message)" if since else ""
        log.warning("skipped broken data in %s: %s%s", *event, more)
        self._quiet[shard] = (now, 0)
        return True


def _shard_of(exn: Exception) -> str:
    for arg in reversed(exn.args):
        if isinstance(arg, str) and (arg.endswith(".tar") or "://" in arg or "pipe:" in arg):
            return arg
        name = getattr(arg, "name", None)
        if isinstance(name, str):
            return name
    text = str(exn.args[0]) if exn.args else ""
    named = re.search(r"name='([^']+)'", text)
    if named:
        return named.group(1)
    return text.rsplit(" @ ", 1)[-1] if " @ " in text else "an unknown shard"


def _reason_of(exn: Exception) -> str:
    first = str(exn.args[0]) if exn.args else type(exn).__name__
    if isinstance(exn, OSError) and exn.strerror:  # args[0] is the errno
        first = exn.strerror
    return f"{type(exn).__name__}: {first.split(' @ ')[0]}"


def _to_tensor(arr: np.ndarray, channels: int | None) -> torch.Tensor:
    if channels is not None and arr.shape[2] != channels:
        raise ValueError(f"image has {arr.shape[2]} channels, the recipe expects {channels}")
    return torch.from_numpy(to_signed(np.ascontiguousarray(arr.transpose(2, 0, 1))))


class _Decode:
    """Decode to tensors, counting every sample pulled (decodable or not) so a resumed run
    can skip exactly those, still compressed, and continue where the last one stopped."""

    def __init__(
        self,
        channels: int,
        skips: _SkipLog,
        skip: dict[int, int] | None,
        augment_seed: int | None = None,
        liveness: _Liveness | None = None,
        fresh_damage: list | None = None,
        seed: int = 0,
        prefill: str = "none",
    ) -> None:
        self.channels, self.skips, self.skip = channels, skips, skip or {}
        self.augment_seed = augment_seed
        self.liveness = liveness
        self.fresh_damage, self.seed = fresh_damage, seed
        self.prefill = prefill

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker = _worker_id()
        to_skip = self.skip.get(worker, 0)
        pulled = 0
        for sample in samples:
            pulled += 1
            if pulled <= to_skip:
                continue
            try:
                if self.fresh_damage:
                    # drawn from the sample's place in this worker's stream (see augment):
                    # a resumed run draws the same damage again
                    where = f"fresh:{worker}:{pulled}:{sample['__key__']}"
                    pixels = sample_part(sample, "clean")
                    fresh, hole, _ = apply_damage(
                        pixels, self.fresh_damage, sample_rng(self.seed, where)
                    )
                    damaged = _to_tensor(fresh, self.channels)
                    clean = _to_tensor(pixels, self.channels)
                    mask = (torch.from_numpy(hole) > 0).float()[None]
                else:
                    damaged = _to_tensor(sample_part(sample, "damaged"), self.channels)
                    clean = _to_tensor(sample_part(sample, "clean"), self.channels)
                    mask = (_to_tensor(sample_part(sample, "mask"), 1) > 0).float()
                if damaged.shape != clean.shape or mask.shape[1:] != clean.shape[1:]:
                    raise ValueError(f"sizes differ: {damaged.shape} {clean.shape} {mask.shape}")
                start = None if self.fresh_damage else self._packed_start(sample, damaged, mask)
            except Exception as exn:
                what = f"missing {exn.args[0]}" if isinstance(exn, KeyError) else str(exn)
                exn.args = (f"sample {sample.get('__key__')}: {what}", sample.get("__url__"))
                self.skips(exn)
                continue
            if self.liveness is not None:
                self.liveness.decoded()
            if self.augment_seed is not None:
                # drawn from the sample's place in this worker's stream, not from a global
                # RNG: a resumed run that skips `pulled` samples draws the same turns again
                draw = f"{self.augment_seed}:{worker}:{pulled}:{sample['__key__']}"
                turn = zlib.crc32(draw.encode()) % 8
                damaged, clean, mask = (dihedral(t, turn) for t in (damaged, clean, mask))
                start = None if start is None else dihedral(start, turn)
            yield {
                "damaged": damaged,
                "clean": clean,
                "mask": mask,
                "start": start,
                "key": sample["__key__"],
                "skipped": self.skips.count,
                "worker": worker,
                "pulled": pulled,
            }

    def _packed_start(
        self, sample: dict[str, Any], damaged: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        """The prefill the pack solved for this sample's holes (`pack.packed_prefills`) with
        its known pixels, (C, H, W) in [-1, 1]; None when the pack has none of this kind
        (then the batch's is solved in `_collate`)."""
        from gan_dist.core.prefill import prefill_parts, stack_fills

        parts = [] if self.prefill == "none" else prefill_parts(self.prefill)
        if not parts or not all(any(k.startswith(f"prefill-{p}.") for k in sample) for p in parts):
            return None

        fills = []
        for part in parts:
            fill = _to_tensor(sample_part(sample, f"prefill-{part}"), self.channels)
            if fill.shape != damaged.shape:
                raise ValueError(f"sizes differ: prefill {fill.shape}, image {damaged.shape}")
            fills.append(torch.where(mask > 0, fill, damaged)[None])
        return stack_fills(fills, 1 - mask[None])[0]


def dihedral(image: torch.Tensor, turn: int) -> torch.Tensor:
    """One of the 8 flips and quarter turns of a (C, H, W) image (BasicSR's use_hflip and
    use_rot); a non-square image only gets the flips that keep its shape."""
    if turn & 4 and image.shape[-1] == image.shape[-2]:  # a transpose keeps only squares
        image = image.transpose(-1, -2)
    if turn & 1:
        image = image.flip(-1)
    if turn & 2:
        image = image.flip(-2)
    return image.contiguous()


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else 0


@dataclass(frozen=True)
class Slot:
    """One reader of the data: DataLoader worker `worker` of rank `rank`. Slot `index` of
    `count` owns whole shards `index, index + count, ...` when there are at least `count`
    shards, else sample `index, index + count, ...` of every shard."""

    rank: int
    worker: int
    index: int
    count: int

    def part(self, urls: list[str]) -> tuple[list[str], int, int]:
        """(this slot's shards, first sample, sample stride) within each of them."""
        if len(urls) >= self.count:
            return urls[self.index :: self.count], 0, 1
        return list(urls), self.index, self.count


def current_slot(rank: int | None = None, world: int | None = None) -> Slot:
    """The slot of the calling process (inside a DataLoader worker: of that worker)."""
    if rank is None or world is None:
        rank, world, _, _ = wds.utils.pytorch_worker_info()
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return Slot(rank, worker, rank * workers + worker, world * workers)


class _Liveness:
    """Is the training stream stuck? Stuck means: no sample decoded for `timeout_s`, over at
    least two full rounds of this slot's shards, while something failed (a shard that
    cannot be opened, a sample that cannot be decoded) or the rounds read no sample at all.
    A healthy small pack whose samples wait in the shuffle buffer is read, not stuck. A round
    that read nothing waits a little longer each time (up to 5 s) instead of spinning."""

    def __init__(self, shards: int, timeout_s: float, skips: _SkipLog) -> None:
        self.shards, self.timeout_s, self.skips = shards, timeout_s, skips
        self._visits = 0  # shard visits since a sample was last decoded
        self._failures = skips.count  # skip events when a sample was last decoded
        self._last_sample = time.monotonic()
        self._read_in_round = 0
        self._empty_rounds = 0  # rounds in a row that read no sample at all

    def decoded(self) -> None:
        self._visits = 0
        self._failures = self.skips.count
        self._last_sample = time.monotonic()

    def read(self) -> None:
        self._read_in_round += 1

    def visit(self, slot: Slot) -> None:
        """Called before each shard is opened; raises DataStalled when the stream is stuck."""
        self._visits += 1
        if (self._visits - 1) % self.shards or self._visits == 1:
            return  # not at the start of a new round
        self._empty_rounds = 0 if self._read_in_round else self._empty_rounds + 1
        self._read_in_round = 0
        quiet = time.monotonic() - self._last_sample
        failing = self.skips.count > self._failures or self._empty_rounds >= 2
        if self._visits > 2 * self.shards and quiet >= self.timeout_s and failing:
            raise DataStalled(
                f"no training sample could be read for {quiet:.0f} s (rank {slot.rank}, data "
                f"worker {slot.worker}: each of its {self.shards} shard(s) failed at least "
                f"twice); last error: {self.skips.last_error or 'none (the shards are empty)'}. "
                "Check that the shards exist and are readable (gan-dist data inspect DIR)"
            )
        if self._empty_rounds:
            time.sleep(min(5.0, 0.25 * 2**self._empty_rounds))


class _SlotSamples:
    """The pipeline's source: this slot's samples. A finite pass reads its part once in
    order; training reads it for ever, each round in an order drawn from (seed, slot, round),
    checking at every shard that the stream is alive and the parent process still there."""

    def __init__(
        self, urls: list[str], config: StreamConfig, skips: _SkipLog, decode: _Decode
    ) -> None:
        self.urls, self.config, self.skips, self.decode = urls, config, skips, decode

    def __call__(self) -> Iterator[dict[str, Any]]:
        cfg = self.config
        slot = current_slot(cfg.rank, cfg.world)
        shards, first, stride = slot.part(self.urls)
        if not cfg.train:
            yield from self._read(shards, first, stride)
            return
        liveness = _Liveness(len(shards), cfg.stall_timeout_s, self.skips)
        self.decode.liveness = liveness
        parent = os.getppid()
        for round_ in range(sys.maxsize):
            order = random.Random(f"{cfg.seed}:{slot.index}:{slot.count}:{round_}")
            for url in order.sample(shards, len(shards)):
                if torch.utils.data.get_worker_info() is not None and os.getppid() != parent:
                    return  # the trainer is gone: nothing will ever read this again
                liveness.visit(slot)
                yield from self._read([url], first, stride)

    def _read(self, shards: list[str], first: int, stride: int) -> Iterator[dict[str, Any]]:
        for url in shards:
            opened = _opened([{"url": url}], self.config.allow_shell, self.skips)
            files = wds.tariterators.tar_file_expander(opened, handler=self.skips)
            samples = wds.tariterators.group_by_keys(files, handler=self.skips)
            for i, sample in enumerate(samples):
                if i % stride == first:
                    if self.decode.liveness is not None:
                        self.decode.liveness.read()
                    yield sample


def open_shard(url: str, allow_shell: bool = False) -> IO[bytes]:
    """A shard's bytes, read without a shell: a local path; a URL with a scheme through
    fsspec (s3://, gs://, https://, file://; s3 and gs need `pip install s3fs` or `gcsfs`);
    a `pipe:COMMAND` through WebDataset's shell pipe only when `allow_shell` (the recipe's
    data.allow_shell). Raises GanDistError for a pipe: URL not allowed or a scheme with no
    installed backend, OSError for an unreadable shard."""
    if url.startswith("pipe:"):
        if not allow_shell:
            raise GanDistError(f"{url}: pipe: URLs need data.allow_shell: true")
        return wds.gopen(url)
    if "://" in url:
        import fsspec

        try:
            return fsspec.open(url, "rb").open()
        except (ImportError, ValueError) as exc:  # no backend for the scheme, bad URL
            raise GanDistError(f"{url}: {exc}") from None
    return open(url, "rb")


def _opened(
    sources: Iterable[dict[str, Any]], allow_shell: bool, handler: Callable[[Exception], bool]
) -> Iterator[dict[str, Any]]:
    """WebDataset's url_opener, with `open_shard` in place of its gopen (which would hand
    any URL scheme to a subprocess)."""
    for source in sources:
        try:
            yield source | {"stream": open_shard(source["url"], allow_shell)}
        except Exception as exc:  # the shard is skipped with a warning, as a corrupt one is
            exc.args = (*exc.args, source["url"])
            if not handler(exc):
                return


def _ignore(_signum: int, _frame: object) -> None:
    """A stop signal reaching a data worker: the trainer stops it (see `_worker_start`)."""


def _worker_start(_worker_id: int) -> None:
    """Schedulers signal every process of a job, and Ctrl-C every process of the terminal's
    group. A worker killed by one makes PyTorch abort the main process mid-step; ignoring
    them lets the trainer finish the step, write its checkpoint and shut the workers down
    itself (`ShardStream.close`). A worker must still never outlive its trainer: on Linux
    the kernel kills it when the parent dies."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        # a handler, not SIG_IGN: an ignored signal stays ignored across exec, and a
        # `pipe:` command started by this worker could then not be stopped by SIGTERM
        signal.signal(sig, _ignore)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Batch(TypedDict, total=False):
    """What the stream yields, B samples at a time (image values in [-1, 1], `pixels.py`):

    damaged: (B, C, H, W) the damaged images, holes -1
    clean: (B, C, H, W) the originals
    mask: (B, 1, H, W) 1 in the holes, 0 elsewhere
    start: (B, C, H, W) the holes' prefill (`nets/prefill.py`), when the data workers
        solved it (on a CPU); absent, the generator fills them itself
    key: the samples' keys in their shards
    skipped, pulled: per data worker, samples skipped and pulled so far (for exact resume)
    """

    damaged: torch.Tensor
    clean: torch.Tensor
    mask: torch.Tensor
    start: torch.Tensor
    key: list[str]
    skipped: dict[int, int]
    pulled: dict[int, int]


def _collate(samples: list[dict[str, Any]], prefill: str = "none") -> Batch:
    batch: Batch = {
        "damaged": torch.stack([s["damaged"] for s in samples]),
        "clean": torch.stack([s["clean"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "key": [s["key"] for s in samples],
        "skipped": {samples[-1]["worker"]: samples[-1]["skipped"]},
        "pulled": {samples[-1]["worker"]: samples[-1]["pulled"]},
    }
    if prefill != "none":
        from gan_dist.core.prefill import fill_holes

        missing = [i for i, s in enumerate(samples) if s.get("start") is None]
        starts = [s.get("start") for s in samples]
        if missing:  # samples the pack solved no prefill for; any prefill's channels
            solved = fill_holes(batch["damaged"][missing], 1 - batch["mask"][missing], prefill)
            for i, fill in zip(missing, solved, strict=True):
                starts[i] = fill
        batch["start"] = torch.stack(starts)
    return batch


class ShardStream:
    """Iterable of batches for this rank; `skipped` sums the counts of every worker. Call
    `close` when done: it stops the data workers for certain."""

    def __init__(self, urls: list[str], config: StreamConfig) -> None:
        self.urls, self.config = urls, config
        self._skips = _SkipLog()
        self._per_worker: dict[int, int] = {}
        self._pulled: dict[int, int] = dict(config.skip or {})
        self._loader_iter: Iterator[dict[str, Any]] | None = None
        self.pipeline = self._build()
        self.loader = torch.utils.data.DataLoader(
            self.pipeline,
            batch_size=None,
            num_workers=config.workers,
            persistent_workers=config.workers > 0,
            worker_init_fn=_worker_start,
            prefetch_factor=4 if config.workers > 0 else None,
            # a worker blocked inside a read (a hung mount, a pipe that never ends) reaches
            # no liveness check; the wait for its batch is bounded here instead
            timeout=config.stall_timeout_s * BLOCKED_READ_FACTOR if config.workers else 0,
        )

    @property
    def skipped(self) -> int:
        """Exact without workers; with workers, counts arrive with each worker's batches, so
        a break after a worker's last sample is logged but not counted here."""
        if self.config.workers == 0:
            return self._skips.count
        return sum(self._per_worker.values())

    def _build(self) -> wds.DataPipeline:
        cfg = self.config
        augment_seed = cfg.seed if cfg.train and cfg.augment else None
        fresh = cfg.fresh_damage if cfg.train else None
        decode = _Decode(
            cfg.channels, self._skips, cfg.skip, augment_seed, fresh_damage=fresh, seed=cfg.seed,
            prefill=cfg.prefill,
        )  # fmt: skip
        stages: list[Any] = [_SlotSamples(self.urls, cfg, self._skips, decode)]
        if cfg.train and cfg.shuffle_buffer > 1:
            # Shuffle the compressed samples: the buffer then costs ~0.1 MB a sample instead
            # of megabytes of float tensors, and nothing is decoded only to wait in it.
            # Reproducible; every slot shuffles its own samples.
            stages.append(wds.detshuffle(cfg.shuffle_buffer, cfg.shuffle_buffer // 4, cfg.seed))
        stages.append(decode)
        # a finite pass keeps its last short batch so every sample is seen
        collate = functools.partial(_collate, prefill=cfg.prefill)
        stages.append(wds.batched(cfg.batch_size, collation_fn=collate, partial=not cfg.train))
        return wds.DataPipeline(*stages)

    @property
    def position(self) -> dict[int, int]:
        """Samples each worker has handed out in the batches consumed so far: give it back as
        `StreamConfig.skip` (same seed, workers and world size) to continue exactly here."""
        return dict(self._pulled)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Not a generator: the DataLoader iterator (which draws its base seed from torch's
        # RNG) is created now, at iter(), not at the first next(), so a caller can put the
        # RNG state back after it and resume bit-exactly.
        self._loader_iter = iter(self.loader)
        if self.config.workers:
            # before multiprocessing's own exit handler (atexit runs last-registered first),
            # which would wait for ever on a worker that ignores its SIGTERM
            atexit.register(_close_at_exit, weakref.ref(self))
        return self._batches(self._loader_iter)

    def _batches(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except DataStalled as exc:  # from a worker: its message, not its traceback
                raise DataStalled(_last_line(str(exc))) from None
            except RuntimeError as exc:
                if "timed out" not in str(exc):
                    raise
                waited = self.config.stall_timeout_s * BLOCKED_READ_FACTOR
                raise DataStalled(
                    f"no batch came from the data workers for {waited:.0f} s: a read is "
                    "blocked (a hung mount, a pipe: command that never ends) in "
                    f"{', '.join(self.urls[:3])}{' ...' if len(self.urls) > 3 else ''}; last "
                    f"error: {self._skips.last_error or 'none'}. Raise data.stall_timeout_s "
                    "if the storage is just this slow"
                ) from None
            self._per_worker.update(batch.pop("skipped"))
            self._pulled.update(batch.pop("pulled"))
            yield batch

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the data workers, by SIGKILL if they do not stop within `timeout_s`.

        Workers ignore SIGTERM (see `_worker_start`), and one busy inside a read never looks
        at PyTorch's shutdown event; left alive, `multiprocessing` joins it at interpreter
        exit, for ever. Safe to call twice."""
        it, self._loader_iter = self._loader_iter, None
        workers = list(getattr(it, "_workers", []))
        if not workers:
            return
        children = _children(workers)  # what they started (`pipe:` commands) goes too
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # asks, and waits up to 5 s for each worker
        for proc in workers:
            if proc.is_alive():
                children += _children([proc])  # before the worker's death hides them
                proc.kill()
                proc.join(timeout_s)
        for child in children:
            with contextlib.suppress(Exception):
                child.kill()


def _children(workers: list) -> list:
    import psutil

    found = []
    for proc in workers:
        with contextlib.suppress(psutil.Error, ValueError):
            found += psutil.Process(proc.pid).children(recursive=True)
    return found


def _close_at_exit(ref: weakref.ref[ShardStream]) -> None:
    stream = ref()
    if stream is not None:
        stream.close()


def _last_line(text: str) -> str:
    """The message of an error re-raised from a DataLoader worker (whose text carries the
    worker's traceback): its last line, without the exception's name."""
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith(("gan_dist.", "DataStalled")) else last


def make_stream(spec: str, config: StreamConfig, split: str | None = None) -> ShardStream:
    split = split or ("train" if config.train else "val")
    return ShardStream(shard_urls(spec, split, config.allow_shell), config)
