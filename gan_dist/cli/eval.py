"""`gan-dist eval`: a model's repair quality on shards or a folder of clean images."""

from __future__ import annotations

from pathlib import Path

import typer

from gan_dist.cli._common import err, out, resolve_device, user_errors
from gan_dist.cli.repair import MODEL_HELP


def eval_(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    data: Path = typer.Option(..., "--data", help="Packed shards, or a folder of clean images."),
    batch: int = typer.Option(16, min=1, help="Images per forward pass."),
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
    FID, KID and LPIPS when given their nets' weights files."""
    import json

    from rich.table import Table

    from gan_dist.models import load_model
    from gan_dist.train.evaluate import evaluate_model
    from gan_dist.train.perceptual import PerceptualWeights

    with user_errors():
        weights = PerceptualWeights(inception_weights, lpips_weights, lpips_net)
        loaded = load_model(model, resolve_device(device), tracking_uri)
        metrics = evaluate_model(loaded, data, batch, weights or None)
    for item in metrics["skipped"]:  # images of a folder that could not be scored
        err.print(f"[yellow]skipped[/] {item['file']}: ", end="")
        err.print(item["reason"], markup=False)
    if json_:  # JSON has no NaN (a metric of images without holes): null instead
        finite = {k: None if v != v else v for k, v in metrics.items() if not isinstance(v, list)}
        report = {"model": model, "data": str(data)} | metrics | finite
        out.print_json(json.dumps(report, allow_nan=False))
        return
    skipped = len(metrics.pop("skipped"))
    split = metrics.pop("split")  # None: a folder of images, packed for the evaluation
    notes = [f"{split} split"] * bool(split) + [f"{skipped} skipped"] * bool(skipped)
    title = f"{model} on {data}" + (f" ({', '.join(notes)})" if notes else "")
    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)
