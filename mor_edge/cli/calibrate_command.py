"""`mor-edge calibrate`: an INT8 calibration set."""

from __future__ import annotations

from pathlib import Path

import click

from .app import denoise_option, load_model_dir, main, model_option, user_errors


@main.command()
@model_option
@click.option(
    "--images",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of HR photos (default: the built-in training photos).",
)
@click.option(
    "--samples",
    type=click.IntRange(1, 10_000),
    default=64,
    show_default=True,
    help="Calibration samples (at least the number of buckets; at most 10000).",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option(
    "--bucket-levels",
    type=click.IntRange(1, 4),
    default=2,
    show_default=True,
    help="Static bucket grid the set must cover.",
)
@click.option(
    "--routing",
    "routings",
    type=click.Choice(["static", "dynamic", "base"]),
    multiple=True,
    default=("static", "dynamic"),
    show_default=True,
    help="Routing modes to capture stage inputs for (repeat the option).",
)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write the set to.")
@click.option("--force", is_flag=True, help="Replace an existing folder.")
@denoise_option
@user_errors
def calibrate(
    model_dir: str | None,
    images: str | None,
    samples: int,
    seed: int,
    bucket_levels: int,
    routings: tuple[str, ...],
    out: str,
    force: bool,
    denoise: float | None,
) -> None:
    """Build an INT8 calibration set: degraded crops stratified so every static bucket gets
    samples, each stage's inputs captured from the reference, saved with its recipe."""
    from mor_edge.atomic import check_destination, claim
    from mor_edge.calib.sampling import build_calibration_set, coverage
    from mor_edge.image_io import folder_images

    check_destination(Path(out), force)
    with claim(Path(out)):  # a second calibrate into OUT fails now, not after the sampling
        model = load_model_dir(model_dir, denoise)  # the model the set is for, as `export` loads it
        cset = build_calibration_set(
            model,
            samples,
            seed,
            bucket_levels,
            tuple(dict.fromkeys(routings)),
            folder_images(images) if images else None,
        )
        cset.save(out, force)
    report = coverage(cset, model)
    click.echo(f"wrote {out} ({samples} samples, stage inputs for {', '.join(cset.routings)})")
    click.echo(
        f"\nbucket coverage: {report['buckets_covered']} of {report['buckets_total']} buckets have samples"
    )
    click.echo(f"  {'bucket':<8}{'samples':>8}{'own s':>8}{'pool':>8}")
    for row in report["buckets"]:
        click.echo(f"  {row['bucket']:<8}{row['samples']:>8}{row['natural']:>8}{row['pool_natural']:>8}")
    click.echo(
        "  (own s / pool: samples whose own scores fall in the bucket; the rest are the nearest draws)"
    )
    e = report["experts"]
    click.echo(
        f"\nrouted-expert coverage (dynamic): worst layer {e['min']:.0%}, mean {e['mean']:.0%}, "
        f"{e['layers_fully_covered']} of {e['layers']} layers see every expert"
    )
