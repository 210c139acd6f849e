"""Per-rank streaming of packed shards into batches of float tensors.

Training reads *resampled* shards (an endless stream, stopped by step count), because
splitting a finite shard list over ranks gives ranks different numbers of batches and DDP
then hangs at the epoch end. Validation reads a finite pass, each rank its own shards.
The loader is deliberately not handed to `accelerator.prepare()`, which would re-shard it.

A batch is a dict: `damaged` and `clean` (B, C, H, W) in [-1, 1], `mask` (B, 1, H, W) with
1 = missing pixel, and `key` (list of sample keys). Broken samples or shards are skipped
with a warning naming the shard, and counted (`ShardStream.skipped`), also across workers.
"""

from __future__ import annotations

import functools
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from gan_dist.data.images import decode_png
from gan_dist.data.pack import read_manifest
from gan_dist.errors import GanDistError

log = logging.getLogger("gan_dist.data")


def shard_urls(spec: str, split: str = "train") -> list[str]:
    """A packed folder (its manifest lists the split's shards), or a brace pattern / list
    of local paths or pipe: URLs as WebDataset understands them."""
    path = Path(spec)
    if path.is_dir():
        manifest = read_manifest(path)
        urls = [str(path / s["name"]) for s in manifest["shards"] if s["split"] == split]
        if not urls:
            raise GanDistError(f"{path}: the manifest lists no {split} shards")
        return urls
    urls = list(wds.shardlists.expand_urls(spec))
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        raise GanDistError(
            f"{len(missing)} of {len(urls)} shards in {spec!r} do not exist (first: {missing[0]})"
        )
    return urls


def check_shards(
    spec: str, channels: int, image_size: int, field: str, split: str = "train"
) -> None:
    """Fail before training if the shards do not match the recipe: a mismatch would make
    every sample undecodable and an endless stream skip forever."""
    path = Path(spec)
    if path.is_dir():
        manifest = read_manifest(path)
        found = (manifest["channels"], manifest["image_size"])
    else:
        local = [u for u in shard_urls(spec, split) if "://" not in u and not u.startswith("pipe:")]
        if not local:
            return
        found = _first_sample_shape(Path(local[0]))
    if found != (channels, image_size):
        raise GanDistError(
            f"{field}: {spec} holds {found[1]} px, {found[0]}-channel samples but the recipe "
            f"says data.image_size={image_size}, data.channels={channels}; re-pack the images "
            "or change the recipe"
        )


def _first_sample_shape(path: Path) -> tuple[int, int]:
    import tarfile

    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if member.name.endswith(".clean.png"):
                    arr = decode_png(tar.extractfile(member).read())
                    return arr.shape[2], arr.shape[0]
    except (tarfile.TarError, OSError) as exc:
        raise GanDistError(f"{path}: unreadable shard ({exc})") from None
    raise GanDistError(f"{path}: no clean.png in the shard; is it a gan-dist shard?")


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
    # model.prefill, computed here (in the DataLoader workers, beside a CPU training step)
    # instead of inside the generator's forward; batches then carry it as `start`
    prefill: str = "none"
    # random flips and quarter turns of each training sample (data.augment)
    augment: bool = False


class _SkipLog:
    """webdataset's exception handler: warn with the shard's name, count, carry on."""

    def __init__(self) -> None:
        self.count = 0
        self._last: tuple[str, str] | None = None

    def __call__(self, exn: Exception) -> bool:
        event = (_shard_of(exn), _reason_of(exn))
        if event != self._last:  # a broken tar stream is handed over at two levels
            self.count += 1
            log.warning("skipped broken data in %s: %s", *event)
        self._last = event
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
    return f"{type(exn).__name__}: {first.split(' @ ')[0]}"


def _to_tensor(data: bytes, channels: int | None) -> torch.Tensor:
    arr = decode_png(data)
    if channels is not None and arr.shape[2] != channels:
        raise ValueError(f"image has {arr.shape[2]} channels, the recipe expects {channels}")
    scale = 2.0 / float(np.iinfo(arr.dtype).max)
    out = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32))
    return out.mul_(scale).sub_(1.0)


class _Decode:
    """Decode to tensors, counting every sample pulled (decodable or not) so a resumed run
    can skip exactly those, still compressed, and continue where the last one stopped."""

    def __init__(
        self,
        channels: int,
        skips: _SkipLog,
        skip: dict[int, int] | None,
        augment_seed: int | None = None,
    ) -> None:
        self.channels, self.skips, self.skip = channels, skips, skip or {}
        self.augment_seed = augment_seed

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker = _worker_id()
        to_skip = self.skip.get(worker, 0)
        pulled = 0
        for sample in samples:
            pulled += 1
            if pulled <= to_skip:
                continue
            try:
                damaged = _to_tensor(sample["damaged.png"], self.channels)
                clean = _to_tensor(sample["clean.png"], self.channels)
                mask = (_to_tensor(sample["mask.png"], 1) > 0).float()
                if damaged.shape != clean.shape or mask.shape[1:] != clean.shape[1:]:
                    raise ValueError(f"sizes differ: {damaged.shape} {clean.shape} {mask.shape}")
            except Exception as exn:
                what = f"missing {exn.args[0]}" if isinstance(exn, KeyError) else str(exn)
                exn.args = (f"sample {sample.get('__key__')}: {what}", sample.get("__url__"))
                self.skips(exn)
                continue
            if self.augment_seed is not None:
                # drawn from the sample's place in this worker's stream, not from a global
                # RNG: a resumed run that skips `pulled` samples draws the same turns again
                draw = f"{self.augment_seed}:{worker}:{pulled}:{sample['__key__']}"
                turn = zlib.crc32(draw.encode()) % 8
                damaged, clean, mask = (dihedral(t, turn) for t in (damaged, clean, mask))
            yield {
                "damaged": damaged,
                "clean": clean,
                "mask": mask,
                "key": sample["__key__"],
                "skipped": self.skips.count,
                "worker": worker,
                "pulled": pulled,
            }


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


def _ignore_stop_signals(_worker_id: int) -> None:
    """Schedulers signal every process of a job. A worker killed by SIGTERM makes PyTorch
    abort the main process mid-step; ignoring it lets the trainer finish the step, write
    its checkpoint and shut the workers down itself."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def _collate(samples: list[dict[str, Any]], prefill: str = "none") -> dict[str, Any]:
    batch = {
        "damaged": torch.stack([s["damaged"] for s in samples]),
        "clean": torch.stack([s["clean"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "key": [s["key"] for s in samples],
        "skipped": {samples[-1]["worker"]: samples[-1]["skipped"]},
        "pulled": {samples[-1]["worker"]: samples[-1]["pulled"]},
    }
    if prefill != "none":
        from gan_dist.nets.prefill import fill_holes

        batch["start"] = fill_holes(batch["damaged"], 1 - batch["mask"], prefill)
    return batch


class ShardStream:
    """Iterable of batches for this rank; `skipped` sums the counts of every worker."""

    def __init__(self, urls: list[str], config: StreamConfig) -> None:
        self.urls, self.config = urls, config
        self._skips = _SkipLog()
        self._per_worker: dict[int, int] = {}
        self._pulled: dict[int, int] = dict(config.skip or {})
        self.pipeline = self._build()
        self.loader = torch.utils.data.DataLoader(
            self.pipeline,
            batch_size=None,
            num_workers=config.workers,
            persistent_workers=config.workers > 0,
            worker_init_fn=_ignore_stop_signals,
            prefetch_factor=4 if config.workers > 0 else None,
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
        if cfg.train:
            # every rank and worker draws its own reproducible shard sequence
            source = [wds.ResampledShards(self.urls, seed=cfg.seed, deterministic=True)]
        else:
            source = [wds.SimpleShardList(self.urls), wds.split_by_node, wds.split_by_worker]
        stages = [*source, wds.tarfile_to_samples(handler=self._skips)]
        if cfg.train and cfg.shuffle_buffer > 1:
            # Shuffle the compressed samples: the buffer then costs ~0.1 MB a sample instead
            # of megabytes of float tensors, and nothing is decoded only to wait in it.
            # Reproducible; the shard order already differs per rank and worker.
            stages.append(wds.detshuffle(cfg.shuffle_buffer, cfg.shuffle_buffer // 4, cfg.seed))
        augment_seed = cfg.seed if cfg.train and cfg.augment else None
        stages.append(_Decode(cfg.channels, self._skips, cfg.skip, augment_seed))
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
        return self._batches(iter(self.loader))

    def _batches(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            self._per_worker.update(batch.pop("skipped"))
            self._pulled.update(batch.pop("pulled"))
            yield batch


def make_stream(spec: str, config: StreamConfig, split: str | None = None) -> ShardStream:
    split = split or ("train" if config.train else "val")
    return ShardStream(shard_urls(spec, split), config)
