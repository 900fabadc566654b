"""`mor-edge upscale`: one file or a folder, with the reference or an artifact."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from .app import (
    MAX_REFERENCE_TILE,
    load_model_dir,
    main,
    model_option,
    open_runtime,
    runtime_options,
    user_errors,
)


@main.command()
@click.argument("input_path", metavar="IN", type=click.Path())
@click.argument("output_path", metavar="OUT", type=click.Path())
@model_option
@click.option(
    "--artifact",
    type=click.Path(file_okay=False),
    default=None,
    help="Run an exported artifact folder instead of the PyTorch reference.",
)
@click.option(
    "--tile",
    type=click.IntRange(8, MAX_REFERENCE_TILE),
    default=None,
    help=f"LR tile side, 8-{MAX_REFERENCE_TILE} (memory and attention grow with it). Default: the "
    "artifact's input size, or 128 for the reference.",
)
@click.option(
    "--overlap",
    type=click.IntRange(0, MAX_REFERENCE_TILE - 1),
    default=None,
    help="LR overlap between tiles. Default: tile/4.",
)
@click.option(
    "--norm",
    type=click.Choice(["tile", "whole"]),
    default="tile",
    show_default=True,
    help="GroupNorm statistics of the reference: each tile's own (fast), or the whole "
    "image's, gathered exactly over the tiles first (no seams; about 29x slower on the built-in "
    "model, measured). Artifacts always normalise per tile.",
)
@click.option(
    "--per-tile-routing",
    is_flag=True,
    help="Route every tile on its own scores (default: one "
    "routing decision for the whole image, so neighbouring tiles use the same experts).",
)
@click.option(
    "--format",
    "out_suffix",
    type=click.Choice([".png", ".jpg", ".webp", ".tif", ".bmp"]),
    default=".png",
    show_default=True,
    help="Output format in folder mode.",
)
@click.option(
    "--max-minutes",
    type=click.FloatRange(0, 10_000),
    default=60,
    show_default=True,
    help="Refuse an image whose estimated time, judged from its first few tiles, is longer "
    "(0: no limit). Tiles with the same pixels run once, so flat areas cost almost nothing.",
)
@runtime_options
@user_errors
def upscale(
    input_path: str,
    output_path: str,
    model_dir: str | None,
    artifact: str | None,
    tile: int | None,
    overlap: int | None,
    norm: str,
    per_tile_routing: bool,
    out_suffix: str,
    max_minutes: float,
    threads: int | None,
    runtime: str,
    providers: str,
) -> None:
    """Super-resolve IN (PNG, JPEG, WebP, TIFF, BMP; any size) to OUT, whose extension sets
    the format. With a folder IN, every file in it goes to the folder OUT; failures are
    reported per file and the rest go on. Tiled: memory is bounded by the tile, not the image."""
    from ..upscale import TileOptions, batch_outputs, upscale_file

    engine: Any
    if artifact is not None:
        if norm == "whole":
            raise UserError("--norm whole needs the PyTorch reference: artifacts have fixed graphs")
        if model_dir is not None:
            raise UserError("--model and --artifact exclude each other: an artifact holds its model")
        engine = open_runtime(artifact, threads, runtime, providers)
        if tile is not None and tile != engine.tile_size:
            raise UserError(
                f"this artifact takes {engine.tile_size}x{engine.tile_size} tiles; --tile {tile} cannot run"
            )
        tile = engine.tile_size
    else:
        if importlib.util.find_spec("torch") is None:
            raise UserError(
                "upscale without --artifact runs the PyTorch reference, which is not installed: "
                "pass --artifact, or pip install 'mor-edge[reference]'"
            )
        from ..reference_engine import ReferenceEngine

        model = load_model_dir(model_dir)
        engine = ReferenceEngine(model, whole_image_norm=norm == "whole")
        tile = tile or 128
    overlap = tile // 4 if overlap is None else overlap
    if overlap >= tile:
        raise UserError(f"--overlap {overlap} must be smaller than the tile ({tile})")
    options = TileOptions(
        tile=tile,
        overlap=overlap,
        per_tile_routing=per_tile_routing,
        max_seconds=max_minutes * 60 or None,
    )
    src = Path(input_path)
    if not src.is_dir():
        size_in, size_out = upscale_file(src, output_path, engine, options)
        click.echo(f"{input_path} ({size_in}) -> {output_path} ({size_out})")
        click.echo(engine_line(engine, artifact), err=True)
        return
    failures = 0
    for file_in, file_out in batch_outputs(src, Path(output_path), out_suffix):
        try:
            size_in, size_out = upscale_file(file_in, file_out, engine, options)
            click.echo(f"{file_in} ({size_in}) -> {file_out} ({size_out})")
        except UserError as exc:
            failures += 1
            click.echo(f"failed: {exc}", err=True)
    click.echo(engine_line(engine, artifact), err=True)
    if failures:
        raise UserError(f"{failures} of the files in {src} failed (see above)")


def engine_line(engine: Any, artifact: str | None) -> str:
    """Which engine ran (after the run: what ONNX Runtime's sessions actually used)."""
    if artifact is None:
        c = engine.model.config
        return f"engine: PyTorch reference ({c.name}: {c.label})"
    ran = engine.describe()
    where = ", ".join(ran.get("providers_used", [])) or ran.get("device", "")
    return (
        f"engine: {ran['runtime']} {ran.get('version', '')} ({where}, {ran['threads']} threads), {artifact}"
    )
