"""`gan-dist data`: pack images into shards, inspect shards."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import typer

from gan_dist.cli._common import err, out, user_errors

app = typer.Typer(help="Pack images into WebDataset shards and inspect them.", no_args_is_help=True)


@app.command("pack")
def pack(
    paths: list[Path] = typer.Argument(
        ...,
        help="SRC OUT (clean images to damage), or just OUT with --clean/--damaged.",
        show_default=False,
    ),
    clean: Path = typer.Option(None, help="Paired mode: folder of clean images."),
    damaged: Path = typer.Option(None, help="Paired mode: damaged images, same relative paths."),
    masks: Path = typer.Option(None, help="Paired mode: masks (white = missing), optional."),
    size: int = typer.Option(
        256,
        help="Output side in pixels: resize + centre crop, or the "
        "crop size with --crops-per-image.",
    ),
    crops_per_image: int = typer.Option(
        None,
        help="Take K random size x size crops per image at native resolution instead of resizing.",
    ),
    channels: int = typer.Option(None, help="1 or 3. Default: 1 if every image is greyscale."),
    bit_depth: int = typer.Option(
        None,
        help="8 or 16. Default: the deepest source; asking for "
        "8 with 16-bit sources reduces them (said in the notices).",
    ),
    damage: str = typer.Option(
        None,
        help="A damage preset or a YAML file (a recipe, or a "
        "list of steps). Presets: see `gan-dist data presets`.",
    ),
    val_fraction: float = typer.Option(0.05, help="Fraction of source images held out."),
    shard_samples: int = typer.Option(1000, help="Samples per shard."),
    seed: int = typer.Option(0, help="Seed for damage, crops and the split."),
    overwrite: bool = typer.Option(False, help="Replace shards already in OUT."),
    max_pixels: int = typer.Option(100_000_000, help="Skip images with more pixels."),
    min_side: int = typer.Option(32, help="Skip images with a shorter side."),
    codec: str = typer.Option(
        "auto",
        help="How shards store pixels: png, or zstd (raw arrays, Zstandard-compressed: ~8x "
        "faster to decode, for feeding GPUs). auto: zstd for 16-bit packs, png for 8-bit.",
    ),
    prefill: str = typer.Option(
        "biharmonic,patchmatch",
        help="Hole prefills to solve once here and store with each sample (what a recipe's "
        "model.prefill names; training then reads them instead of solving them at every "
        "step): comma-separated biharmonic, harmonic, patchmatch, or none; a combined kind "
        "such as patchmatch+biharmonic packs each of its parts; a kind named twice is packed "
        "once.",
    ),
) -> None:
    """Turn images into WebDataset shards of damaged/clean/mask samples plus a manifest."""
    from gan_dist.config.recipe import resolve_damage
    from gan_dist.core.errors import GanDistError
    from gan_dist.data.pack import PackOptions, pack_folder, pack_pairs

    with user_errors():
        paired = clean is not None or damaged is not None
        if paired and (clean is None or damaged is None):
            raise GanDistError("paired mode needs both --clean DIR and --damaged DIR")
        if paired and len(paths) != 1:
            raise GanDistError(f"with --clean/--damaged give only OUT (got {len(paths)} paths)")
        if not paired and len(paths) != 2:
            raise GanDistError("give SRC and OUT, or --clean DIR --damaged DIR OUT")
        if paired and damage is not None:
            raise GanDistError(
                "--damage applies to clean images; paired mode packs the "
                "damaged images you give it as they are"
            )
        steps, label = (None, None) if paired else resolve_damage(damage or "inpaint")
        options = PackOptions(
            size=size,
            crops_per_image=crops_per_image,
            channels=channels,
            bit_depth=bit_depth,
            damage=steps,
            damage_source=label,
            val_fraction=val_fraction,
            shard_samples=shard_samples,
            seed=seed,
            overwrite=overwrite,
            max_pixels=max_pixels,
            min_side=min_side,
            codec=codec,
            prefills=_prefills(prefill),
        )
        with _progress("packing") as advance:
            if paired:
                result = pack_pairs(clean, damaged, masks, paths[0], options, advance)
            else:
                result = pack_folder(paths[0], paths[1], options, advance)
    _report_pack(result)


def _prefills(given: str) -> tuple[str, ...]:
    """--prefill's kinds, in order, once each, a recipe's combined kind (`a+b`) as its
    parts; () for `none`. Raises GanDistError for an empty value or `none` beside a kind."""
    import re

    from gan_dist.core.errors import GanDistError
    from gan_dist.core.textfiles import excerpt

    kinds = [k.strip() for k in re.split(r"[,+]", given)]
    if not all(kinds):
        raise GanDistError(
            f"--prefill {excerpt(given, 60)}: name kinds separated by commas, or none"
        )
    if "none" in kinds:
        if len(kinds) > 1:
            raise GanDistError(
                f"--prefill {excerpt(given, 60)}: none packs no prefill; give it alone"
            )
        return ()
    return tuple(dict.fromkeys(kinds))


def _report_pack(result) -> None:
    from rich.table import Table

    m = result.manifest
    if result.skipped:
        table = Table(
            "skipped file",
            "reason",
            title=f"{len(result.skipped)} files skipped",
            title_justify="left",
            box=None,
            pad_edge=False,
        )
        for item in result.skipped:
            table.add_row(item.path, item.reason)
        err.print(table)
    if result.notices:
        counts = Counter(note for _, note in result.notices)
        for note, n in sorted(counts.items()):
            first = next(k for k, v in result.notices if v == note)
            err.print(f"[yellow]notice:[/] {note}: {n} file(s), e.g. {first}")
    table = Table("split", "images", "samples", "shards", box=None, pad_edge=False)
    for split in ("train", "val"):
        shards = sum(s["split"] == split for s in m["shards"])
        table.add_row(split, str(m["source_images"][split]), str(m["counts"][split]), str(shards))
    out.print(table)
    rate = result.packed_images / result.seconds if result.seconds else 0.0
    out.print(
        f"packed {result.packed_images} images ({m['image_size']} px, {m['channels']} ch, "
        f"{m['bit_depth']}-bit, {m['codec']}) into {result.out} in {result.seconds:.1f}s "
        f"({rate:.1f} images/s); skipped {len(result.skipped)}"
    )


class _progress:
    """A rich progress bar on stderr, fed by the library's (done, total) callback."""

    def __init__(self, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self.task = None

    def __enter__(self):
        self.bar.start()
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task("", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc) -> None:
        self.bar.stop()


@app.command("inspect")
def inspect(
    folder: Path = typer.Argument(..., help="A folder written by `gan-dist data pack`."),
    grid: Path = typer.Option(None, help="Write a damaged | mask | clean picture here."),
    samples: int = typer.Option(8, help="Rows in the grid."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Read every shard back: counts, size, channels, bit depth, mask coverage, checksums."""
    from rich.table import Table

    from gan_dist.data.inspect import describe, inspect_shards

    with user_errors():
        report = inspect_shards(folder, grid, samples)
    summary = describe(report)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        out.print(
            f"{folder}: {summary['image_size']} px, {summary['channels']} channel(s), "
            f"{summary['bit_depth']}-bit, {summary['codec']}, "
            f"damage {summary['damage_source'] or 'paired'}"
        )
        table = Table(
            "split",
            "samples",
            "images",
            "shards",
            "mask coverage",
            "sizes",
            box=None,
            pad_edge=False,
        )
        for split, s in summary["splits"].items():
            cover = "-" if s["mean_mask_coverage"] is None else f"{s['mean_mask_coverage']:.1%}"
            table.add_row(
                split,
                str(s["samples"]),
                str(s["source_images"]),
                str(s["shards"]),
                cover,
                ", ".join(s["sizes"]),
            )
        out.print(table)
        if report.grid:
            out.print(f"grid: {report.grid}")
    for problem in report.problems:
        err.print(f"[red]problem:[/] {problem}", markup=True)
    if report.problems:
        raise typer.Exit(1)


@app.command("presets")
def presets() -> None:
    """The damage presets `data pack --damage` accepts."""
    from rich.table import Table

    from gan_dist.config.recipe import DAMAGE_PRESETS

    table = Table("preset", "damage", box=None, pad_edge=False)
    for name, (description, _) in DAMAGE_PRESETS.items():
        table.add_row(name, description)
    out.print(table)
