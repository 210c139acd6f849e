"""`gan-dist repair`: run a registered (or local) model over images of any size."""

from __future__ import annotations

from pathlib import Path

import typer

from gan_dist.cli._common import err, out, resolve_device, user_errors
from gan_dist.data.images import DEFAULT_MAX_PIXELS

MODEL_HELP = (
    "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/repair-model, or a run, checkpoint or "
    "model directory."
)


def repair(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="An image or a folder."),
    output: str = typer.Argument(
        ..., help="Output file or folder (relative paths kept; `out/` is always a folder)."
    ),
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    mask: Path = typer.Option(
        None, help="A mask file, or a folder of masks matched by relative path (white = repair)."
    ),
    tile: int = typer.Option(256, min=16, help="Tile size: bounds memory, not the image size."),
    overlap: int = typer.Option(32, min=0, help="Pixels tiles share, blended smoothly."),
    batch: int = typer.Option(4, min=1, help="Tiles per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    precision: str = typer.Option(
        "auto",
        help="auto, bf16 or fp32. auto: bf16 for 8-bit images where the device runs it "
        "natively (GPUs with bf16, CPUs with AMX or AVX-512 BF16), else fp32. Known pixels "
        "are exact either way.",
    ),
    overwrite: bool = typer.Option(
        False, help="Replace output files that already exist (never an input or a mask)."
    ),
    output_format: str = typer.Option(
        "same",
        "--format",
        help="same: each output in its input's format (DICOM: 16-bit PNG); png or tif: "
        "lossless, e.g. to keep a JPEG's known pixels exact.",
    ),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, min=1, help="Refuse images with more pixels than this (width x height)."
    ),
    json_summary: bool = typer.Option(
        False, "--json", help="Print the summary as JSON (one object per file) for scripts."
    ),
    tracking_uri: str = typer.Option(
        None,
        help="For models:/ and runs:/ URIs. Default: $MLFLOW_TRACKING_URI or ./mlflow.db "
        "(must exist: never created here).",
    ),
) -> None:
    """Repair images; exits 1 if any file failed (the others are still written).

    Masks match images by relative path and full stem (`a/day.jpg` takes `a/day.png`,
    `a/day_mask.png`, `a/day-mask.png` or LaMa's `a/day_mask000.png`; --mask may be INPUT
    itself); white is a hole, or 1 in a mask of only 0 and 1. No output may land on an
    input or a mask."""
    import json

    from rich.progress import Progress
    from rich.table import Table

    from gan_dist.core.errors import GanDistError
    from gan_dist.core.precision import inference_precision
    from gan_dist.repair.files import STATUSES, plan, repair_files
    from gan_dist.repair.model_file import load_model

    _stop_on_sigterm()
    with user_errors():
        if precision not in ("auto", "bf16", "fp32"):
            raise GanDistError(f"--precision {precision}: use auto, bf16 or fp32")
        on = resolve_device(device)
        run_in = inference_precision(precision, on)
        if precision == "auto" and run_in == "bf16":
            run_in = "bf16 for 8-bit images, fp32 for 16-bit"
        planned = plan(input_path, output, mask, output_format)
        if not planned:
            raise GanDistError(f"{input_path}: no images found")
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("repair", total=len(planned))
            rows = bar.add_task("rows of this image", total=None, visible=False)

            def file_done(result) -> None:
                bar.advance(task)
                bar.update(rows, visible=False)

            results = repair_files(
                lambda: load_model(model, on, tracking_uri).use_precision(precision),
                planned,
                tile,
                overlap,
                batch,
                overwrite,
                max_pixels,
                file_done,
                lambda done, height: bar.update(rows, completed=done, total=height, visible=True),
            )
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    if json_summary:
        summary = {"files": [r.as_json() for r in results], "counts": counts, "device": on}
        typer.echo(json.dumps(summary | {"precision": run_in}, indent=2))
    else:
        table = Table("file", "size", "status", "seconds", "detail")
        for r in results:
            style = {"repaired": "green", "failed": "red"}.get(r.status, "yellow")
            table.add_row(
                str(r.source), r.size, f"[{style}]{r.status}[/]", f"{r.seconds:.2f}", r.detail
            )
        out.print(table)
        tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s != "no hole")
        out.print(f"{tally} ({on}, {run_in})")
    if counts["failed"]:
        raise typer.Exit(1)


def _stop_on_sigterm() -> None:
    """SIGTERM (a SLURM time limit, `timeout`, `kill`) unwinds like Ctrl-C: the file being
    written is removed, never left half-written beside the finished ones; exit 143."""
    import signal

    from gan_dist.run.signals import Terminated

    def stop(signum, frame) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, stop)
