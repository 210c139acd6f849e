"""`gan-dist eval`: a model's repair quality on shards or a folder of clean images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from gan_dist.cli._common import err, out, resolve_device, user_errors
from gan_dist.cli.repair import MODEL_HELP
from gan_dist.data.images import DEFAULT_MAX_PIXELS


def eval_(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    data: Path = typer.Option(
        ...,
        "--data",
        help="Packed shards (scored as packed), or clean images: a folder or one file, each "
        "scored at its own size, repaired as `gan-dist repair` repairs it.",
    ),
    mask: Path = typer.Option(
        None,
        help="Images only: a mask file, or a folder of masks matched as `gan-dist repair` "
        "matches them (white = hole). Default: holes drawn from the model's own damage.",
    ),
    batch: int = typer.Option(
        None, min=1, help="Per pass. Default: 16 samples of shards; 4 tiles of images (repair's)."
    ),
    tile: int = typer.Option(256, min=16, help="Images: repair's tile size (px)."),
    overlap: int = typer.Option(32, min=0, help="Images: pixels tiles share (repair's)."),
    precision: str = typer.Option(
        "auto", help="Images: auto, bf16 or fp32, as `gan-dist repair --precision`."
    ),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, min=1, help="Skip images with more pixels than this (width x height)."
    ),
    json_: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    tracking_uri: str = typer.Option(
        None,
        help="For models:/ and runs:/ URIs. Default: $MLFLOW_TRACKING_URI or ./mlflow.db "
        "(must exist: never created here).",
    ),
    inception_weights: Path = typer.Option(
        None,
        help="torch-fidelity's Inception-v3 weights file "
        "(pt_inception-2015-12-05-6726825d.pth): adds FID and KID. Never downloaded.",
    ),
    lpips_weights: Path = typer.Option(
        None,
        help="torchvision weights of the LPIPS backbone (alexnet-owt-7be5be79.pth for "
        "--lpips-net alex): adds LPIPS. Never downloaded.",
    ),
    lpips_net: str = typer.Option("alex", help="LPIPS backbone: alex, vgg or squeeze."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """PSNR, SSIM and MS-SSIM over the image; PSNR, SSIM, L1 and texture (SWD) in the hole;
    FID, KID and LPIPS when given their nets' weights files. The report says what was
    scored: how many images of which sizes, at which scale, with which holes."""
    import json

    from rich.progress import Progress
    from rich.table import Table

    from gan_dist.core.errors import GanDistError
    from gan_dist.metrics.perceptual import PerceptualWeights
    from gan_dist.repair.evaluate import evaluate_data
    from gan_dist.repair.model_file import load_model

    with user_errors():
        if precision not in ("auto", "bf16", "fp32"):
            raise GanDistError(f"--precision {precision}: use auto, bf16 or fp32")
        weights = PerceptualWeights(inception_weights, lpips_weights, lpips_net)
        loaded = load_model(model, resolve_device(device), tracking_uri)
        loaded.use_precision(precision)
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("eval", total=None)
            metrics = evaluate_data(
                loaded,
                data,
                mask,
                tile,
                overlap,
                batch,
                max_pixels,
                weights or None,
                lambda done, total: bar.update(task, completed=done, total=total),
            )
    for item in metrics["skipped"]:  # images of a folder that could not be scored
        err.print(f"[yellow]skipped[/] {item['file']}: ", end="")
        err.print(item["reason"], markup=False)
    if json_:  # JSON has no NaN (a metric of images without holes): null instead
        finite = {k: None if v != v else v for k, v in metrics.items() if isinstance(v, float)}
        report = {"model": model, "data": str(data)} | metrics | finite
        if "prefill" in report:
            report["prefill"] = {
                k: None if isinstance(v, float) and v != v else v
                for k, v in report["prefill"].items()
            }
        out.print_json(json.dumps(report, allow_nan=False))
        return
    skipped = len(metrics.pop("skipped"))
    metrics.pop("split")
    metrics.pop("images", None)
    scored = metrics.pop("scored")
    baseline = metrics.pop("prefill", None)
    lines = [f"{model} on {data}", *_what_was_scored(scored)]
    if skipped:
        lines.append(f"{skipped} skipped (listed above)")
    columns = ["metric", "model"]
    if baseline is not None:  # what the net adds to the classical fill it starts from
        columns.append(f"its {baseline.pop('kind')} prefill alone")
    table = Table(*columns, title="\n".join(lines))
    for key, value in metrics.items():
        row = [key, _cell(value)]
        if baseline is not None:
            row.append(_cell(baseline[key]) if key in baseline else "")
        table.add_row(*row)
    out.print(table)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _what_was_scored(scored: dict[str, Any]) -> list[str]:
    """The table title's lines after the first: what `evaluate_data` scored."""
    sizes = scored["smallest"]
    if scored["largest"] != sizes:
        sizes += f" to {scored['largest']}"
    count = scored["images"]
    what = "samples" if scored["path"] == "shards" else "images"
    first = f"{count} {what[:-1] if count == 1 else what}, {sizes} px, scale: {scored['scale']}"
    if scored["path"] == "shards":
        first += f" ({scored['split']} split)"
    else:
        first += (
            f" (repaired as `gan-dist repair`: {scored['tile']} px tiles, "
            f"{scored['overlap']} px overlap, {scored['precision']})"
        )
    coverage = scored["hole_coverage_pct"]
    holes = f"holes: {scored['masks']}"
    if coverage is not None and not scored["masks"].startswith("none"):
        holes += f"; mean {coverage:.1f}% of pixels"
    return [first, holes]
