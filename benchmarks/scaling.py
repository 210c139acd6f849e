"""Data-parallel scaling and start-up time of `gan-dist launch`, measured side by side.

1. Aggregate images/s of quickstart (128 px, real photo shards) launched with 1 and with 2
   processes (`gan-dist launch --local --cpu-procs N`, gloo, one thread each, decoding and
   hole prefill in the main process: with data workers, one process would quietly borrow
   the idle core). Beside them, the machine's own ceiling: two independent one-process runs
   at once, with no communication. Target: 2 processes >= 1.8x one. On a GPU machine, one
   GPU instead (`--gpus-per-node 1`).
2. Seconds from starting `gan-dist launch` to the first finished training step (target
   under 20 s on CPU for quickstart).

Runs alternate (1, 2, independent pair, 1, 2, ...) so machine noise hits all alike; medians.
Each measurement is made on two packs of the same 104 samples: one shard (a pack smaller than
--shard-samples, as the demo's is) and 13 shards of 8. Every rank trains on samples of its own
in both (whole shards, or every other sample of the one shard).

    python benchmarks/scaling.py [--steps 100] [--repeats 3] [--packs one,many]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from gan_dist.cli.demo_flow import export_sample_photos
from gan_dist.config.recipe import resolve_damage
from gan_dist.data.pack import PackOptions, pack_folder

PACKS = {"one": 1000, "many": 8}  # samples per shard: one shard of 104, or 13 of 8


def shards(work: Path, pack: str) -> Path:
    export_sample_photos(work / "photos")
    steps, label = resolve_damage("inpaint")
    options = PackOptions(
        size=128,
        crops_per_image=8,
        damage=steps,
        damage_source=label,
        val_fraction=0,
        shard_samples=PACKS[pack],
    )
    out = pack_folder(work / "photos", work / f"shards-{pack}", options)
    return out.out


def launch_cmd(data: Path, run_dir: Path, steps: int, procs: int, gpu: bool) -> list[str]:
    sets = {
        "data.train": data,
        "data.val": "null",
        "data.workers": 0,
        "train.max_steps": steps,
        "train.log_every": 10,
        "train.checkpoint_every": 100000,
        "tracking.enabled": "false",
    }
    devices = ["--gpus-per-node", "1"] if gpu else ["--cpu-procs", str(procs)]
    return [
        sys.executable,
        "-m",
        "gan_dist",
        "launch",
        "quickstart",
        "--local",
        *devices,
        "--run-dir",
        str(run_dir),
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
    ]


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def finish(proc: subprocess.Popen, started: float, batch: int) -> dict[str, float]:
    """Reads the plain progress lines as they come: when the first step ended, and the rate
    of the steps after the first tenth (start-up and warm-up excluded)."""
    stamps: dict[int, float] = {}
    first_step = None
    for line in proc.stdout:
        m = re.match(r"step (\d+)/(\d+)", line)
        if m:
            stamps[int(m.group(1))] = time.perf_counter()
        elif "first step done" in line:
            first_step = time.perf_counter()
    if proc.wait() != 0 or first_step is None or len(stamps) < 2:
        raise RuntimeError(f"launch failed (exit {proc.returncode})")
    last = max(stamps)
    first = min(k for k in stamps if k >= last // 10)
    return {
        "first_step_s": first_step - started,
        "steps_per_s": (last - first) / (stamps[last] - stamps[first]),
        "batch": batch,
    }


def measure(data: Path, work: Path, steps: int, repeats: int, gpu: bool) -> dict:
    batch = 8  # quickstart's per-process batch
    runs: dict[str, list[dict]] = {"1": [], "2": [], "2_independent": []}
    for i in range(repeats):
        for procs in [1] if gpu else [1, 2]:
            t0 = time.perf_counter()
            p = start(launch_cmd(data, work / f"r{procs}-{i}", steps, procs, gpu))
            runs[str(procs)].append(finish(p, t0, batch * procs))
        if not gpu:
            t0 = time.perf_counter()
            pair = [start(launch_cmd(data, work / f"p{i}-{j}", steps, 1, gpu)) for j in (0, 1)]
            with ThreadPoolExecutor(2) as pool:  # read both outputs as they come
                both = list(pool.map(finish, pair, [t0, t0], [batch, batch]))
            runs["2_independent"].append(
                {"steps_per_s": sum(b["steps_per_s"] for b in both), "batch": batch}
            )

    def images_per_s(kind: str) -> float:
        return statistics.median(r["steps_per_s"] * r["batch"] for r in runs[kind])

    report: dict = {
        "shards": len(list(data.glob("train-*.tar"))),
        "images_per_s_1_process": round(images_per_s("1"), 2),
        "launch_to_first_step_s": round(statistics.median(r["first_step_s"] for r in runs["1"]), 2),
    }
    if not gpu:
        report |= {
            "images_per_s_2_processes": round(images_per_s("2"), 2),
            "speedup_2_over_1": round(images_per_s("2") / images_per_s("1"), 3),
            "images_per_s_2_independent_processes": round(images_per_s("2_independent"), 2),
            "ceiling_speedup_without_communication": round(
                images_per_s("2_independent") / images_per_s("1"), 3
            ),
            "launch_to_first_step_s_2_processes": round(
                statistics.median(r["first_step_s"] for r in runs["2"]), 2
            ),
        }
    report["runs"] = {
        k: [{m: round(x, 3) for m, x in r.items()} for r in v] for k, v in runs.items()
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--packs", default="one,many", help="comma-separated: one, many")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="gan-dist-scaling-"))
    report: dict = {
        "benchmark": "scaling",
        "device": "cuda" if gpu else "cpu",
        "recipe": "quickstart",
        "image_size": 128,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    for pack in args.packs.split(","):
        data = shards(work, pack)
        report[f"pack_{pack}"] = measure(data, work / pack, args.steps, args.repeats, gpu)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
