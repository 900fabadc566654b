"""`mor-edge upscale`: one file or a folder, with the reference or an artifact."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from .app import (
    MAX_REFERENCE_TILE,
    FiniteRange,
    denoise_option,
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
    help="Run an exported artifact folder. Default: the model's own static export (OpenVINO "
    "bf16 where the CPU computes bfloat16 natively, else ONNX Runtime FP32), made once "
    "(parity-checked) and kept in the cache folder (README: the default engine).",
)
@click.option(
    "--reference",
    is_flag=True,
    help="Run the PyTorch reference model instead of its cached export (4.4x slower "
    "for a 512x384 photo on the README's machine; exact routing instead of the export's "
    "degradation buckets).",
)
@click.option(
    "--tile",
    type=click.IntRange(8, MAX_REFERENCE_TILE),
    default=None,
    help=f"LR tile side, 8-{MAX_REFERENCE_TILE} (memory and attention grow with it). Default: the "
    "artifact's input size, or the model's training size (64 for the built-in model).",
)
@click.option(
    "--overlap",
    type=click.IntRange(0, MAX_REFERENCE_TILE - 1),
    default=None,
    help="LR overlap between tiles. Default: tile/8 (seams measured: README).",
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
    type=FiniteRange(0, 10_000),
    default=60,
    show_default=True,
    help="Refuse an image whose estimated time, judged from its first few tiles, is longer "
    "(0: no limit). Tiles with the same pixels run once, so flat areas cost almost nothing.",
)
@denoise_option
@runtime_options
@user_errors
def upscale(
    input_path: str,
    output_path: str,
    model_dir: str | None,
    artifact: str | None,
    reference: bool,
    tile: int | None,
    overlap: int | None,
    norm: str,
    per_tile_routing: bool,
    out_suffix: str,
    max_minutes: float,
    denoise: float | None,
    threads: int | None,
    runtime: str,
    providers: str,
) -> None:
    """Super-resolve IN (PNG, JPEG, WebP, TIFF, BMP; any size) to OUT, whose extension sets
    the format. With a folder IN, every file in it goes to the folder OUT; failures are
    reported per file and the rest go on. Tiled: memory is bounded by the tile, not the image."""
    from ..image_io import check_output_path, probe_image
    from ..upscale import TileOptions, batch_outputs, upscale_file

    if artifact is not None and (reference or model_dir is not None):
        raise UserError(f"--artifact and {'--reference' if reference else '--model'} exclude each other")
    if artifact is not None and denoise is not None:
        raise UserError("--denoise is fixed in an artifact when it is exported (mor-edge export --denoise)")
    if artifact is not None and norm == "whole":
        raise UserError("--norm whole needs the PyTorch reference: artifacts have fixed graphs")
    src = Path(input_path)
    if src.is_dir():  # every output name checked before any work (or any export) is done
        jobs = batch_outputs(src, Path(output_path), out_suffix)
    else:
        probe_image(src)
        jobs = [(src, check_output_path(output_path))]
    engine, tile, source = choose_engine(
        artifact, model_dir, reference, norm, tile, threads, runtime, providers, denoise
    )
    overlap = tile // 8 if overlap is None else overlap
    if overlap >= tile:
        raise UserError(f"--overlap {overlap} must be smaller than the tile ({tile})")
    options = TileOptions(
        tile=tile,
        overlap=overlap,
        per_tile_routing=per_tile_routing,
        max_seconds=max_minutes * 60 or None,
    )
    failures = 0
    for file_in, file_out in jobs:
        try:
            size_in, size_out = upscale_file(file_in, file_out, engine, options)
            click.echo(f"{file_in} ({size_in}) -> {file_out} ({size_out})")
        except UserError as exc:
            if not src.is_dir():
                raise
            failures += 1
            click.echo(f"failed: {exc}", err=True)
    click.echo(engine_line(engine, source), err=True)
    if failures:
        raise UserError(f"{failures} of the files in {src} failed (see above)")


def choose_engine(
    artifact: str | None,
    model_dir: str | None,
    reference: bool,
    norm: str,
    tile: int | None,
    threads: int | None,
    runtime: str,
    providers: str,
    denoise: float | None,
) -> tuple[Any, int, str]:
    """(engine, tile, what it is): the artifact given; else the model's cached export
    (`mor_edge.engine_cache`: found without importing PyTorch, made on first use; the fastest
    kind this machine runs, the next if one fails its parity gates) unless the reference is
    asked for, or needed (`--norm whole`, a tile other than the export's), or no export can be
    made or run here."""
    if artifact is not None:
        return open_engine(artifact, tile, threads, runtime, providers)
    from ..engine_cache import build, engine_kinds, lookup, reference_is_default

    model = None
    why = "asked for" if reference or reference_is_default() else "--norm whole" if norm == "whole" else ""
    reasons = []
    for kind in [] if why else engine_kinds():
        found = lookup(model_dir, kind, denoise)
        if found is None:
            model = model or load_reference_model(model_dir, denoise)
            if tile not in (None, model.config.lr_size):
                why = f"--tile {tile}; the cached export takes {model.config.lr_size}x{model.config.lr_size}"
                break
            made = build(model, model_dir, kind)
            found = made.folder
            if found is None:
                reasons.append(f"{kind.tag}: {made.reason}")
        if found is not None:
            engine, size, source = open_engine(str(found), None, threads, runtime, providers)
            if tile in (None, size):
                return engine, size, f"cached export of the model ({source})"
            why = f"--tile {tile}; the cached export takes {size}x{size}"
            break
    why = why or "; ".join(reasons)
    from ..reference_engine import ReferenceEngine

    model = model or load_reference_model(model_dir, denoise)
    c = model.config
    engine = ReferenceEngine(model, norm == "whole")
    return engine, tile or c.lr_size, f"PyTorch reference ({c.name}: {c.label}; {why})"


def load_reference_model(model_dir: str | None, denoise: float | None) -> Any:
    if importlib.util.find_spec("torch") is None:
        raise UserError(
            "upscale without --artifact runs the model through PyTorch (to export it once, or as "
            "the reference), which is not installed: pass --artifact, or pip install "
            "'mor-edge[reference]'"
        )
    return load_model_dir(model_dir, denoise)


def open_engine(
    artifact: str, tile: int | None, threads: int | None, runtime: str, providers: str
) -> tuple[Any, int, str]:
    engine = open_runtime(artifact, threads, runtime, providers)
    if tile is not None and tile != engine.tile_size:
        raise UserError(
            f"this artifact takes {engine.tile_size}x{engine.tile_size} tiles; --tile {tile} cannot run"
        )
    return engine, engine.tile_size, artifact


def engine_line(engine: Any, source: str) -> str:
    """Which engine ran (after the run: what ONNX Runtime's sessions actually used)."""
    describe = getattr(engine, "describe", None)
    if describe is None:
        return f"engine: {source}"
    ran = describe()
    where = ", ".join(ran.get("providers_used", [])) or ran.get("device", "")
    if "inference_precision" in ran:  # OpenVINO: bf16, or f32 and why
        where += f", {ran['inference_precision']}"
    batch = f", {engine.batch} tiles per call" if engine.batch > 1 else ""
    runtime = f"{ran['runtime']} {ran.get('version', '')}"
    return f"engine: {runtime} ({where}, {ran['threads']} threads{batch}), {source}"
