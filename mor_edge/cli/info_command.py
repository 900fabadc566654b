"""`mor-edge info`: a model folder or an exported artifact."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .app import load_model_dir, main, user_errors
from .formatting import artifact_table

ESTIMATOR_INPUT_WORDS = {"rgb": "colours", "highpass": "high-pass part"}


@main.command()
@click.argument("folder", metavar="[MODEL_DIR | ARTIFACT]", required=False, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@user_errors
def info(folder: str | None, as_json: bool) -> None:
    """Describe a model folder (default: the built-in model): parameters per component, the
    MoR layout (adapted layers, R/S/E/Z/k) and MACs per stage for one image at its size. Given
    an exported ARTIFACT (a folder with manifest.json): its target, precision, routing, model,
    stages and files, verified against their hashes (no PyTorch needed)."""
    if folder is not None and (Path(folder) / "manifest.json").exists():
        from mor_edge.export.manifest import Artifact

        summary = Artifact(folder).summary()
        click.echo(json.dumps(summary, indent=2) if as_json else artifact_table(summary))
        return
    from ..report import model_report

    report = model_report(load_model_dir(folder))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"model  {report['name']}  {report['label']}".rstrip())
    (lw, lh), (sw, sh) = report["lr_size"], report["sr_size"]
    click.echo(f"size   LR {lw}x{lh} -> SR {sw}x{sh}")
    click.echo("\nparameters")
    for name, count in report["parameters"].items():
        click.echo(f"  {name:<18}{count:>15,}")
    mor = report["mor"]
    click.echo(
        f"\nMoR    R={mor['rank']} S={mor['shared']} E={mor['routed']} Z={mor['zero_slots']} "
        f"k={mor['top_k']} alpha={mor['alpha']:g}  gate inputs: {', '.join(mor['gate_inputs'])} "
        f"(scored on the LR image's {ESTIMATOR_INPUT_WORDS[mor['estimator_input']]})"
    )
    for stage, layers in mor["adapted_layers"].items():
        click.echo(
            f"  {stage:<8} {layers['count']} layers ({layers['linear']} linear, {layers['conv']} conv)"
        )
    click.echo("\nMACs per stage (batch 1, adapters at full rank R)")
    for stage, macs in report["macs"].items():
        click.echo(f"  {stage:<10}{macs / 1e9:>12.2f} G")
