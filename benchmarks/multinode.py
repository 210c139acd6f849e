"""What the gradient all-reduce costs across hosts: measured on two namespaced hosts, fitted,
and extrapolated to 1-64 nodes of 8 H100 GPUs.

Measured (as root; two network namespaces joined by a veth pair, `tc tbf` limiting both
directions to a rate): the product's `train_step` (train/step.py) for the nets of a recipe,
under DDP as `gan-dist train` sets it up (`train.builder.accelerator_for`: buckets,
compression, gloo on CPU), one rank and one thread per host, on synthetic batches at the
recipe's image size and a small batch (the bytes all-reduced depend on the nets, not on
the batch). For each rate:

- `step_s`: the median step time of the 2-host run;
- `compute_s`: the same step with no communication: two 1-rank runs at once, one per host,
  so each has the CPU share a rank of the 2-host run has;
- `allreduce_s`: the all-reduce alone of the buckets DDP made (their sizes read from DDP),
  one after another as DDP sends them, with no computation beside it;
- `message_s`: the all-reduce of one number: the cost of a message that carries nothing.

The link's delay is not shaped: this machine's kernel has no `sch_netem` (`tc` answers
"Specified qdisc kind is unknown") and cannot load modules, so latency enters the model as
`message_s` measured on the bare link and as the per-hop latencies in ASSUMED.

Fitted, per recipe: the all-reduce as `buckets * message_s + bytes / (rate * efficiency)`
(least squares over the rates set), and the share of the backward pass the all-reduce
hides behind (`overlap`), from `step_s - compute_s = fixed + max(allreduce_s - overlap *
backward_s, last_bucket_s)` with `backward_s = 2/3 compute_s` (the backward pass does twice
the forward's FLOPs) and `fixed` DDP's own work beside the all-reduce (bucket copies, buffer
broadcasts: on a CPU; left out on GPUs). A simplification: the step has two all-reduces,
D's then G's, each of which can hide only behind its own net's backward pass; the model
takes them as one, with one overlap share and G's last bucket last.

Predicted, for the recipe's own image size and per-GPU batch on H100 nodes of 8 GPUs (NVLink
within a node, one network port per node between nodes), weak scaling (the per-GPU batch
fixed): compute from the step's FLOPs (train/flops.py) at an assumed model-FLOP
utilisation; the all-reduce inside each node, then across nodes, each node sending and
receiving 2 (N-1)/N of the gradient bytes, with 2 log2(N) latencies per bucket (NCCL's
tree), at the bandwidths and latencies in ASSUMED; the overlap fitted above. Efficiency =
compute / (compute + exposed all-reduce): a GPU's images/s against one GPU alone (weak
scaling), shown for the recipe as shipped, with `launch.grad_compression: bf16`, with
`train.grad_accum: 4`, and with both.

    sudo python benchmarks/multinode.py [--recipes quickstart,medical] [--steps 8]
        [--rates none,10,2.5,1] [--out measured.json] [--plot docs/multinode-scaling.png]
    python benchmarks/multinode.py --measured measured.json [--mfu 0.2] [--plot ...]

Prints one JSON document: the measured points, the fit and the prediction.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATES = [None, 10.0, 2.5, 1.0]  # Gbit/s of the link in each direction; None: the bare veth
# image size px (the recipe's: a U-Net's depth, so its gradient bytes, follow the size), batch
MEASURE = {"quickstart": (128, 2), "medical": (256, 1)}
NODES = [1, 2, 4, 8, 16, 32, 64]
ACCUMS = (1, 2, 4, 8, 16, 32, 64)  # train.grad_accum values the prediction tries
PREDICTED = "medical"  # quickstart's nets are too small for FLOPs to give a GPU step time
GPUS_PER_NODE = 8
ASSUMED = {
    "peak_bf16_flops": 989.4e12,  # H100 SXM, dense (train/flops.py)
    "mfu": 0.35,  # model-FLOP utilisation of the step on an H100: an assumption, not measured
    "nvlink_bytes_per_s": 360e9,  # NCCL all-reduce bus bandwidth within an 8-GPU node
    "nvlink_latency_s": 5e-6,
    "networks": {  # bandwidth per node (one port) after protocol overhead, latency per hop
        "InfiniBand 400 Gbit/s": {"bytes_per_s": 400e9 / 8 * 0.9, "latency_s": 5e-6},
        "Ethernet 100 Gbit/s": {"bytes_per_s": 100e9 / 8 * 0.7, "latency_s": 30e-6},
    },
}
SETTINGS = {  # what a user can set, and how it changes the model's inputs
    "as shipped": {"bytes": 1.0, "accum": 1},
    "grad_compression bf16": {"bytes": 0.5, "accum": 1},
    "grad_accum 4": {"bytes": 1.0, "accum": 4},
    "bf16 + grad_accum 4": {"bytes": 0.5, "accum": 4},
}


# -- two hosts ------------------------------------------------------------------------------


class TwoHosts:
    """Two network namespaces `a` and `b` joined by a veth pair, with addresses on a free
    /30; `shape()` limits both directions to a rate. Removed by `close()`."""

    def __init__(self) -> None:
        tag = f"gdbench{os.getpid()}"
        self.ns = {"a": f"{tag}-a", "b": f"{tag}-b"}
        self.dev = {"a": f"{tag}a", "b": f"{tag}b"}
        net = _free_subnet()
        self.addr = {"a": str(net[1]), "b": str(net[2])}
        try:
            for side in "ab":
                _check(["ip", "netns", "add", self.ns[side]])
            _check(
                ["ip", "link", "add", self.dev["a"], "type", "veth", "peer", "name", self.dev["b"]]
            )
            for side in "ab":
                _check(["ip", "link", "set", self.dev[side], "netns", self.ns[side]])
                self.run(side, "ip", "addr", "add", f"{self.addr[side]}/30", "dev", self.dev[side])
                self.run(side, "ip", "link", "set", self.dev[side], "up")
                self.run(side, "ip", "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    def run(self, side: str, *cmd: str) -> None:
        _check([*self.prefix(side), *cmd])

    def prefix(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[side]]

    def shape(self, rate_gbit: float | None) -> None:
        for side in "ab":
            with contextlib.suppress(RuntimeError):  # nothing to delete on a bare link
                self.run(side, "tc", "qdisc", "del", "dev", self.dev[side], "root")
            if rate_gbit is not None:
                # a bucket of 1 ms at the rate: larger lets a message through unlimited
                burst = f"{max(64_000, int(rate_gbit * 1e9 / 8 / 1000))}b"
                tbf = ["rate", f"{rate_gbit}gbit", "burst", burst, "latency", "100ms"]
                self.run(side, "tc", "qdisc", "add", "dev", self.dev[side], "root", "tbf", *tbf)

    def close(self) -> None:
        for ns in self.ns.values():
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _check(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    taken = [ipaddress.ip_interface(a).network for a in re.findall(r"inet (\S+)", used)]
    for net in ipaddress.ip_network("10.234.0.0/16").subnets(new_prefix=30):
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free /30 in 10.234.0.0/16")


# -- one rank -------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """One rank: time `train_step` on synthetic batches, then (with 2 ranks) the all-reduce of
    DDP's buckets alone; write the medians to `args.out_file`."""
    os.environ["OMP_NUM_THREADS"] = "1"  # else Accelerate gives a CPU rank 2 threads
    import torch

    torch.set_num_threads(1)
    if args.world > 1:  # the environment torch's launchers give a rank; none: one process
        os.environ.update(
            RANK=str(args.rank), LOCAL_RANK="0", WORLD_SIZE=str(args.world),
            LOCAL_WORLD_SIZE="1", MASTER_ADDR=args.addr, MASTER_PORT=str(args.port),
            GLOO_SOCKET_IFNAME=args.ifname,
        )  # fmt: skip
    import torch.distributed as dist

    from gan_dist.config.recipe import load_recipe
    from gan_dist.train.builder import accelerator_for, build_nets, optimizer
    from gan_dist.train.step import Nets, train_step

    size, batch = MEASURE[args.recipe]
    recipe = load_recipe(
        args.recipe,
        [f"data.image_size={size}", f"data.batch_size={batch}", "data.train=unused",
         "train.channels_last=false", *args.set],
    )  # fmt: skip
    accelerator, _ = accelerator_for(recipe)
    G, D = build_nets(recipe)
    nets = Nets(
        *accelerator.prepare(
            G, D, optimizer(G, recipe.optim.generator), optimizer(D, recipe.optim.discriminator)
        )
    )
    gen = torch.Generator().manual_seed(args.rank)
    c = recipe.data.channels
    clean = torch.rand(batch, c, size, size, generator=gen) * 2 - 1
    mask = (torch.rand(batch, 1, size, size, generator=gen) > 0.7).float()
    sample = {"damaged": clean * (1 - mask), "clean": clean, "mask": mask}
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        train_step(sample, nets, recipe.objective, accelerator, update_g=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    out = {"step_s": statistics.median(times), "steps": len(times)}
    if args.world > 1:
        # the step all-reduces D's gradients (before D's optimiser step), then G's
        buckets = _bucket_bytes(nets.D) + _bucket_bytes(nets.G)
        dtype = torch.bfloat16 if recipe.launch.grad_compression == "bf16" else torch.float32
        tensors = [torch.zeros(b // 4, dtype=dtype) for b in buckets]
        rounds = []
        for _ in range(args.steps):
            dist.barrier()
            start = time.perf_counter()
            for t in tensors:
                dist.all_reduce(t)
            rounds.append(time.perf_counter() - start)
        one, messages = torch.zeros(1), []
        for _ in range(50):
            start = time.perf_counter()
            dist.all_reduce(one)
            messages.append(time.perf_counter() - start)
        out |= {
            "allreduce_s": statistics.median(rounds),
            "message_s": statistics.median(messages),
            "bucket_bytes": buckets,
            "sent_bytes": sum(t.nelement() * t.element_size() for t in tensors),
        }
        dist.barrier()  # neither rank tears the group down while the other still sends
    Path(args.out_file).write_text(json.dumps(out))
    accelerator.end_training()


def _bucket_bytes(ddp) -> list[int]:
    """The fp32 bytes of each gradient bucket DDP all-reduces, in the order it sends them
    (DDP rebuilds its buckets in the order the first backward pass made the gradients)."""
    data = ddp._get_ddp_logging_data()
    sizes = data.get("rebuilt_bucket_sizes") or data.get("bucket_sizes", "")
    return [int(s) for s in str(sizes).split(",") if s.strip()]


# -- measuring ------------------------------------------------------------------------------


def measure(
    recipe: str, hosts: TwoHosts, steps: int, extra: list[str], rates: list[float | None]
) -> list[dict]:
    """`compute_s` once, then `step_s`, `allreduce_s` and `message_s` at each rate."""
    with tempfile.TemporaryDirectory() as tmp:
        hosts.shape(None)
        alone = _ranks(recipe, hosts, steps, extra, Path(tmp), world=1)
        compute_s = statistics.median(r["step_s"] for r in alone)
        points = []
        for rate in rates:
            hosts.shape(rate)
            rank0 = _ranks(recipe, hosts, steps, extra, Path(tmp), world=2)[0]
            keys = ("step_s", "allreduce_s", "message_s", "bucket_bytes", "sent_bytes")
            points.append({"rate_gbit": rate, "compute_s": compute_s} | {k: rank0[k] for k in keys})
            print(json.dumps({"recipe": recipe, **points[-1]}), file=sys.stderr)
        hosts.shape(None)
    return points


def _ranks(recipe, hosts, steps, extra, tmp: Path, world: int) -> list[dict]:
    """Rank 0 on host a and rank 1 on host b (world 2), or a 1-rank run on each (world 1)."""
    from gan_dist.launch.local import free_port

    port = free_port()
    procs = []
    for rank, side in enumerate("ab"):
        out = tmp / f"{side}.json"
        out.unlink(missing_ok=True)
        cmd = [
            *hosts.prefix(side), sys.executable, __file__, "--worker", "--recipe", recipe,
            "--rank", str(rank if world > 1 else 0), "--world", str(world),
            "--addr", hosts.addr["a"], "--port", str(port), "--ifname", hosts.dev[side],
            "--steps", str(steps), "--out-file", str(out), *(f"--set={s}" for s in extra),
        ]  # fmt: skip
        procs.append((subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True), out))
    results = []
    for proc, out in procs:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode:
            raise RuntimeError(f"a rank of {recipe} exited {proc.returncode}:\n{err[-3000:]}")
        results.append(json.loads(out.read_text()))
    return results


# -- the model ------------------------------------------------------------------------------


def fit(points: list[dict]) -> dict:
    """The link efficiency by least squares over the rate-limited points (the bare veth has
    no set rate; its effective rate is reported), then the overlap by a grid search over
    [0, 1]."""
    shaped = [p for p in points if p["rate_gbit"] is not None]
    # the bytes' share of the all-reduce = bytes / rate * (1 / efficiency)
    x = [p["sent_bytes"] / (p["rate_gbit"] * 1e9 / 8) for p in shaped]
    y = [_payload_s(p) for p in shaped]
    inv_eff = sum(a * b for a, b in zip(x, y, strict=True)) / sum(a * a for a in x)
    efficiency = 1 / inv_eff if inv_eff > 0 else math.inf

    def exposed(p: dict, overlap: float) -> float:
        last = p["allreduce_s"] * p["bucket_bytes"][-1] / sum(p["bucket_bytes"])
        return max(p["allreduce_s"] - overlap * 2 / 3 * p["compute_s"], last)

    def residuals(overlap: float) -> list[float]:
        return [p["step_s"] - p["compute_s"] - exposed(p, overlap) for p in points]

    def error(overlap: float) -> float:  # around the fixed cost that fits `overlap` best
        r = residuals(overlap)
        return sum((x - statistics.mean(r)) ** 2 for x in r)

    overlap = min((i / 100 for i in range(101)), key=error)
    fixed_s = statistics.mean(residuals(overlap))
    doubts = [
        f"{p['rate_gbit'] or 'bare'}: the 2-host step ({p['step_s']:.3f} s) is faster than "
        f"the step alone ({p['compute_s']:.3f} s)"
        for p in points
        if p["step_s"] < p["compute_s"]
    ]
    if not 0.3 < efficiency < 1.2:
        doubts.append(f"a link efficiency of {efficiency:.2f} of the set rate")
    if fixed_s < 0:
        doubts.append(f"DDP's own work fitted at {fixed_s:.3f} s, below 0")
    return {
        "link_efficiency": round(efficiency, 3),
        "bare_link_gbit": [
            round(p["sent_bytes"] * 8 / 1e9 / _payload_s(p), 2)
            for p in points
            if p["rate_gbit"] is None
        ],
        "overlap": overlap,
        # DDP's own work per step beside the all-reduce: gradients copied into buckets and
        # back, buffers broadcast before each forward
        "ddp_fixed_s": fixed_s,
        "rms_error_s": (error(overlap) / len(points)) ** 0.5,
        # measurements the model cannot explain: noise (more --steps) or a busy machine
        "doubts": doubts,
    }


def _payload_s(point: dict) -> float:
    """The all-reduce's time less what its messages cost empty: what its bytes took, s."""
    return point["allreduce_s"] - len(point["bucket_bytes"]) * point["message_s"]


def predict(
    recipe_name: str, bucket_bytes: list[int], overlap: float, overrides: list[str]
) -> dict:
    """Efficiency on 1-64 nodes of 8 H100s for each network in ASSUMED and each setting in
    SETTINGS, at the recipe's (with `overrides`) image size and per-GPU batch, for the fp32
    gradient buckets DDP made of its nets (`bucket_bytes`, in the order it sends them)."""
    from gan_dist.config.recipe import load_recipe
    from gan_dist.train.flops import train_step_flops

    recipe = load_recipe(recipe_name, ["data.train=unused", *overrides])
    flops_per_image = train_step_flops(recipe, batch=1)
    compute_s = (
        flops_per_image * recipe.data.batch_size / (ASSUMED["peak_bf16_flops"] * ASSUMED["mfu"])
    )
    bf16, accum = recipe.launch.grad_compression == "bf16", recipe.train.grad_accum
    total = sum(bucket_bytes)
    out = {
        "image_size": recipe.data.image_size,
        "batch_per_gpu": recipe.data.batch_size,
        "train_step_gflop_per_image": round(flops_per_image / 1e9, 1),
        "gradient_mb": round(total / 1e6, 1),
        "buckets": len(bucket_bytes),
        "compute_ms": round(compute_s * 1e3, 2),
        "efficiency": {},
        "grad_accum_for_90": {},
    }
    for net, link in ASSUMED["networks"].items():

        def efficiency(nodes: int, share: float, k: int, link: dict = link) -> float:
            return _efficiency(compute_s, bucket_bytes, overlap, nodes, link, share, k)

        for setting, change in SETTINGS.items():
            share, k = (0.5 if bf16 else change["bytes"]), accum * change["accum"]
            out["efficiency"][f"{net}, {setting}"] = {
                nodes: round(efficiency(nodes, share, k), 3) for nodes in NODES
            }
        for label, share in (("", 0.5 if bf16 else 1.0), (" with grad_compression bf16", 0.5)):
            out["grad_accum_for_90"][net + label] = {
                nodes: next((k for k in ACCUMS if efficiency(nodes, share, k) >= 0.9), None)
                for nodes in NODES
            }
    return out


def _efficiency(
    compute_s: float, bucket_bytes: list[int], overlap: float, nodes: int, link: dict,
    bytes: float, accum: int,
) -> float:  # fmt: skip
    """compute / (compute + exposed all-reduce) per optimiser step: `accum` micro-batches of
    `compute_s` each, then an all-reduce of `bytes` times the gradient's bytes (0.5: bf16)
    inside the node and (nodes > 1) across nodes over `link`."""
    total, buckets = sum(bucket_bytes) * bytes, len(bucket_bytes)
    nvlink = ASSUMED["nvlink_bytes_per_s"], ASSUMED["nvlink_latency_s"]
    ar = _ring(total, GPUS_PER_NODE, buckets, *nvlink)
    if nodes > 1:
        ar += _ring(total, nodes, buckets, link["bytes_per_s"], link["latency_s"])
    # only the last micro-batch's backward pass runs beside the all-reduce, and the last
    # bucket waits for the end of it
    exposed = max(ar - overlap * 2 / 3 * compute_s, ar * bucket_bytes[-1] / sum(bucket_bytes))
    work = compute_s * accum
    return work / (work + exposed)


def _ring(size: float, ranks: int, buckets: int, bytes_per_s: float, latency_s: float) -> float:
    """An all-reduce of `size` bytes in `buckets` messages over `ranks`: each rank sends and
    receives 2 (n-1)/n of the bytes (a ring's bandwidth term), and each bucket waits
    2 log2(n) latencies (the double binary tree NCCL switches to at scale; a ring's
    2 (n-1) would be its worst case)."""
    steps = 2 * math.ceil(math.log2(ranks))
    return 2 * (ranks - 1) / ranks * size / bytes_per_s + steps * buckets * latency_s


def plot(prediction: dict, path: Path) -> None:
    """Predicted efficiency against nodes: a colour per setting, a line style per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.2), dpi=110)
    colours = dict(zip(SETTINGS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for label, row in prediction["efficiency"].items():
        net, setting = label.split(", ", 1)
        style, marker = ("-", "o") if "InfiniBand" in net else (":", "s")
        ax.plot(list(map(int, row)), list(row.values()), style, marker=marker, ms=4,
                color=colours[setting], label=label)  # fmt: skip
    ax.axhline(0.9, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(NODES, [str(n) for n in NODES])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("nodes of 8 H100 GPUs")
    ax.set_ylabel("images/s per GPU vs one GPU alone")
    ax.set_title(
        f"medical, {prediction['image_size']} px, {prediction['batch_per_gpu']} images per GPU "
        "(predicted)"
    )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), handlelength=3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", type=_recipes, default=list(MEASURE))
    parser.add_argument("--steps", type=_positive_int, default=8, help="timed steps per run")
    parser.add_argument(
        "--rates",
        type=_rates,
        default=RATES,
        help="link rates in Gbit/s, comma-separated, at least one; 'none' adds the bare veth",
    )
    parser.add_argument("--set", action="append", default=[], help="a recipe --set, each run")
    parser.add_argument("--measured", type=Path, help="reuse this output's measurements")
    parser.add_argument("--out", type=Path, help="also write the output here")
    parser.add_argument("--plot", type=Path, help="the prediction's plot (PNG)")
    parser.add_argument(
        "--mfu",
        type=_share,
        default=ASSUMED["mfu"],
        help="the step's share of the H100's bf16 peak, in (0, 1], where a GPU measured it",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name, kind in (("recipe", str), ("rank", int), ("world", int), ("addr", str),
                       ("port", int), ("ifname", str), ("out-file", str)):  # fmt: skip
        parser.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    for path in (args.out, args.plot):
        if path is not None and not path.parent.is_dir():
            parser.error(f"{path}: no folder {path.parent} to write it in")
    if args.measured:
        given = [f"--{a}" for a in ("recipes", "steps", "rates", "set")
                 if getattr(args, a) != parser.get_default(a)]  # fmt: skip
        if given:
            parser.error(f"{', '.join(given)}: not used with --measured (what was measured is)")
        setup, measured = _read_measured(args.measured, parser)
    else:
        if args.plot and PREDICTED not in args.recipes:
            parser.error(f"--plot: the plot is of {PREDICTED}'s prediction; measure it too")
        if os.geteuid() != 0:
            sys.exit("benchmarks/multinode.py: measuring makes network namespaces; run as root")
        setup = {
            "date": time.strftime("%Y-%m-%d"),
            "cpu": _cpu_name(),
            "steps": args.steps,
            "rates_gbit": args.rates,
            "set": args.set,
            "size_and_batch": {r: MEASURE[r] for r in args.recipes},
        }
        measured = _measure_all(args)
    fits = {r: fit(points) for r, points in measured.items()}
    for r, f in fits.items():
        for doubt in f["doubts"]:
            print(f"benchmarks/multinode.py: {r}: {doubt}; measure again", file=sys.stderr)
    ASSUMED["mfu"] = args.mfu
    prediction = None
    if PREDICTED in measured:
        buckets = measured[PREDICTED][0]["bucket_bytes"]
        prediction = predict(PREDICTED, buckets, fits[PREDICTED]["overlap"], setup["set"])
    doc = {
        "measurement": setup,
        "predicted_on": time.strftime("%Y-%m-%d"),
        "measured": measured,
        "fit": fits,
        "assumed": ASSUMED,
        "prediction": prediction,
    }
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    if args.plot:
        if prediction is None:
            sys.exit(f"benchmarks/multinode.py: {args.measured} has no {PREDICTED}: no plot")
        plot(prediction, args.plot)


def _measure_all(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every recipe at every rate on two fresh hosts, removed at the end whatever ends it
    (SIGTERM and SIGHUP too, which would otherwise skip the clean-up)."""

    def stop(signum: int, _frame) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    hosts = TwoHosts()
    try:
        return {r: measure(r, hosts, args.steps, args.set, args.rates) for r in args.recipes}
    except KeyboardInterrupt as stopped:
        hosts.close()
        sys.exit(f"benchmarks/multinode.py: stopped ({stopped or 'SIGINT'}); hosts removed")
    finally:
        hosts.close()


def _read_measured(path: Path, parser: argparse.ArgumentParser) -> tuple[dict, dict]:
    """The measurement and its set-up from an earlier output of this script."""
    try:
        doc = json.loads(path.read_text())
        return doc["measurement"], doc["measured"]
    except OSError as exc:
        parser.error(f"--measured {path}: {exc.strerror}")
    except (ValueError, KeyError, TypeError):
        parser.error(f"--measured {path}: not an output of benchmarks/multinode.py")


def _recipes(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MEASURE]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{unknown or text!r}: measured are {list(MEASURE)}")
    return names


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share in (0, 1], e.g. 0.35")
    return value


def _rates(text: str) -> list[float | None]:
    rates: list[float | None] = []
    for item in (i.strip() for i in text.split(",")):
        try:
            rate = None if item == "none" else float(item)
        except ValueError:
            rate = math.nan
        if rate is not None and not 0 < rate < 1000:
            raise argparse.ArgumentTypeError(f"{item!r}: a rate in Gbit/s above 0, or none")
        rates.append(rate)
    if not any(r is not None for r in rates):
        raise argparse.ArgumentTypeError("at least one rate to fit the link's efficiency at")
    return rates


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
