"""The `mor-edge` command line."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn a `UserError` into click's one-line 'Error: ...' and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def _load(model_dir: str | None) -> Any:
    from .builtin import load_model

    try:
        return load_model(model_dir)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None


model_option = click.option(
    "--model",
    "model_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Model folder (config.json + model.safetensors). Default: the built-in model.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mor-edge")
def main() -> None:
    """mor-edge: Mixture-of-Ranks one-step diffusion super-resolution for edge runtimes.

    Every command uses the built-in tiny model unless given a model folder.
    """


@main.command()
@click.argument("model_dir", required=False, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@user_errors
def info(model_dir: str | None, as_json: bool) -> None:
    """Describe MODEL_DIR (default: the built-in model): parameters per component, the MoR
    layout (adapted layers, R/S/E/Z/k) and MACs per stage for one image at its size."""
    from .report import model_report

    report = model_report(_load(model_dir))
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
        f"k={mor['top_k']} alpha={mor['alpha']:g}  gate inputs: {', '.join(mor['gate_inputs'])}"
    )
    for stage, layers in mor["adapted_layers"].items():
        click.echo(
            f"  {stage:<8} {layers['count']} layers ({layers['linear']} linear, {layers['conv']} conv)"
        )
    click.echo("\nMACs per stage (batch 1, adapters at full rank R)")
    for stage, macs in report["macs"].items():
        click.echo(f"  {stage:<10}{macs / 1e9:>12.2f} G")


@main.command()
@click.argument("input_path", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("output_path", metavar="OUT", type=click.Path(dir_okay=False))
@model_option
@user_errors
def upscale(input_path: str, output_path: str, model_dir: str | None) -> None:
    """Super-resolve the PNG or JPEG image IN and write the PNG OUT with the PyTorch
    reference model."""
    from .image_io import check_output_path, load_image, save_image
    from .upscale import upscale_image

    check_output_path(output_path)
    lr = load_image(input_path)
    model = _load(model_dir)
    if model.config.label:
        click.echo(f"note: {model.config.label}", err=True)
    sr = upscale_image(model, lr)
    save_image(sr, output_path)
    click.echo(f"{input_path} ({lr.shape[3]}x{lr.shape[2]}) -> {output_path} ({sr.shape[3]}x{sr.shape[2]})")


if __name__ == "__main__":
    main()
