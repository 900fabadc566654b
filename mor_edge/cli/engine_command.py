"""`mor-edge build-engines`: TensorRT engines for this device from a tensorrt artifact."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .app import main, user_errors


@main.command("build-engines")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option(
    "--workspace",
    "workspace_mb",
    type=click.IntRange(64, 1 << 20),
    default=2048,
    show_default=True,
    help="Builder workspace in MB (the tactics' scratch memory).",
)
@click.option(
    "--opt-level",
    type=click.IntRange(0, 5),
    default=3,
    show_default=True,
    help="TensorRT builder optimization level: higher builds longer, may run faster.",
)
@click.option(
    "--dla-core",
    type=click.IntRange(0, 7),
    default=None,
    help="Build for this DLA core (Jetson Orin), falling back to the GPU for layers DLA lacks "
    "(GroupNorm, SiLU, attention, TopK); the report lists them.",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="Timing cache file, read if present and written back (later builds skip the timing).",
)
@user_errors
def build_engines(
    artifact: str, workspace_mb: int, opt_level: int, dla_core: int | None, timing_cache: str | None
) -> None:
    """Build TensorRT engines for this GPU from a tensorrt ARTIFACT (strongly typed networks,
    one timing cache across stages and buckets), into ARTIFACT/engines/KEY, KEY naming the GPU,
    its compute capability and the TensorRT version; print the layer report. Needs TensorRT
    and a CUDA GPU (refused before any work otherwise)."""
    from mor_edge.export.tensorrt_engines import build_engines as build

    out = build(artifact, workspace_mb, opt_level, dla_core, timing_cache)
    record = json.loads((Path(out) / "build.json").read_text())
    click.echo(f"wrote {out} ({len(record['engines'])} engines, TensorRT {record['tensorrt']})")
    for name, report in record["engines"].items():
        formats = ", ".join(f"{k} {v}" for k, v in sorted(report["output_formats"].items()))
        fallback = report["dla_fallback_to_gpu"]
        click.echo(f"  {name:<24}{report['layers']:>5} layers  {formats}")
        if fallback:
            click.echo(f"    DLA -> GPU: {len(fallback)} layers ({', '.join(fallback[:5])}...)")
