"""`mor-edge parity` and `mor-edge bench`: an artifact against the reference, and its latency."""

from __future__ import annotations

import json

import click

from .app import (
    bench_report,
    main,
    model_option,
    open_runtime,
    parity_report,
    reference_for,
    runtime_options,
    samples_option,
    user_errors,
)
from .formatting import print_bench, print_parity


@main.command()
@click.argument("artifact", type=click.Path(file_okay=False))
@model_option
@samples_option
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def parity(
    artifact: str,
    model_dir: str | None,
    samples: int,
    seed: int,
    threads: int | None,
    runtime: str,
    providers: str,
    as_json: bool,
) -> None:
    """Compare ARTIFACT with the PyTorch reference per stage and end to end on seeded degraded
    held-out photos; exit 1 if a gate fails."""
    model = reference_for(artifact, model_dir)
    report = parity_report(open_runtime(artifact, threads, runtime, providers), model, samples, seed)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_parity(report)
    if not report["passed"]:
        raise SystemExit(1)


@main.command()
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--warmup", type=click.IntRange(0, 1000), default=3, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10000), default=10, show_default=True)
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def bench(
    artifact: str,
    warmup: int,
    runs: int,
    threads: int | None,
    runtime: str,
    providers: str,
    as_json: bool,
) -> None:
    """Single-step latency of ARTIFACT per stage and end to end: warm-up, then median and p90."""
    engine = open_runtime(artifact, threads, runtime, providers)
    report = bench_report(engine, warmup, runs, progress=not as_json)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_bench(report)
