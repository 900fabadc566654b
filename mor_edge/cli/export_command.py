"""`mor-edge export`: one target, routing and precision, then parity and latency."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from .app import (
    bench_report,
    denoise_option,
    load_model_dir,
    main,
    model_option,
    open_runtime,
    parity_report,
    samples_option,
    threads_option,
    user_errors,
)
from .formatting import print_bench, print_parity, print_quantization, print_validation


@main.command("export")
@click.option(
    "--target",
    type=click.Choice(["onnx", "openvino", "coreml", "tensorrt"]),
    default="onnx",
    show_default=True,
    help="coreml converts and validates on any OS; parity and bench need macOS. tensorrt "
    "writes ONNX prepared for TensorRT (strongly typed: FP16 casts, ModelOpt Q/DQ) and its build "
    "recipe; engines are built on the device with `mor-edge build-engines`.",
)
@click.option(
    "--routing",
    type=click.Choice(["static", "dynamic", "base"]),
    default="static",
    show_default=True,
    help="static: experts folded per degradation bucket; dynamic: in-graph TopK + Gather on s; "
    "base: adapters off (a latency baseline).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "int8", "w8", "palette6", "w8a8"]),
    default=None,
    help="Default: fp16 for coreml and tensorrt, fp32 otherwise. bf16 (openvino): the FP32 "
    "IR run in bfloat16 on CPUs that have it (AVX512_BF16, AMX), FP32 elsewhere. int8 (onnx, openvino, "
    "tensorrt): weights and activations, calibrated, the router stays in float; w8: 8-bit "
    "weights only (openvino, coreml); palette6: 6-bit palettized weights (coreml); w8a8: coreml activation "
    "quantization (macOS only).",
)
@click.option(
    "--bucket-levels",
    type=click.IntRange(1, 4),
    default=2,
    show_default=True,
    help="Static routing: grid cells per degradation score (levels^K buckets).",
)
@click.option(
    "--dynamic-form",
    type=click.Choice(["fold", "gather"]),
    default=None,
    help="Dynamic routing: fold the selected ranks into the weights in-graph, or apply them "
    "to the activations. Default: fold; gather for int8 (base weights stay constant).",
)
@click.option(
    "--calib",
    "calib_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="INT8: calibration set from `mor-edge calibrate` (default: one made now, 64 samples).",
)
@click.option(
    "--keep-float",
    type=click.Choice(["default", "auto", "none"]),
    default="default",
    show_default=True,
    help="INT8: layer groups kept in float. default: each stage's conv_in/conv_out; auto: also "
    "those a sensitivity pass finds costly (prints the table); none: quantize all.",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
    help="INT8 with the onnx or tensorrt target: how activation ranges are computed. percentile is more "
    "accurate (measured) but slower to export (2.4x for one bucket of tiny; more with many graphs).",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Tiles per call of the encoder, UNet and decoder (the router sees the image once). On a "
    "2-core CPU, 2 or 4 tiles per call were 3-5% slower per tile than 1 (README); a batch is meant "
    "for GPUs (not measured: none was available). Not for coreml.",
)
@click.option(
    "--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True
)
@model_option
@denoise_option
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Artifact folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing artifact folder.")
@click.option("--skip-parity", is_flag=True, help="Do not run the parity gates after exporting.")
@click.option("--skip-bench", is_flag=True, help="Do not measure latency after exporting.")
@samples_option
@threads_option
@user_errors
def export_command(
    target: str,
    routing: str,
    precision: str | None,
    bucket_levels: int,
    dynamic_form: str | None,
    calib_dir: str | None,
    keep_float: str,
    calibration_method: str,
    batch: int,
    exporter: str,
    model_dir: str | None,
    denoise: float | None,
    out: str | None,
    force: bool,
    skip_parity: bool,
    skip_bench: bool,
    samples: int,
    threads: int | None,
) -> None:
    """Export the model (default: built-in) to TARGET, then check parity against the PyTorch
    reference (exit 1 if a gate fails) and print the latency table."""
    from mor_edge.calib.calibration_set import CalibrationSet
    from mor_edge.export.exporter import export, make_target
    from mor_edge.export.routing_plan import default_buckets

    precision = precision or make_target(target).capabilities.default_precision
    refuse_unused_options(routing, precision)
    model = load_model_dir(model_dir, denoise)
    options: dict[str, Any] = {} if target == "coreml" else {"exporter": exporter}  # coreml traces itself
    if target == "tensorrt":  # ModelOpt's names for the two it has
        if calibration_method == "percentile":
            raise UserError("ModelOpt (the tensorrt target) calibrates with minmax or entropy")
        options["calibration_method"] = {"minmax": "max", "entropy": "entropy"}[calibration_method]
    elif calibration_method != "minmax":
        if target != "onnx":
            raise UserError("--calibration-method applies to the onnx and tensorrt targets")
        options["calibration_method"] = calibration_method
    if out is None:  # the default place is made on demand; a given --out's folder must exist
        out = f"artifacts/{model.config.name}-{target}-{routing}-{precision}"
        Path(out).parent.mkdir(exist_ok=True)
    path = export(
        model,
        out,
        target=target,
        routing=routing,
        precision=precision,
        buckets=default_buckets(model, bucket_levels) if routing == "static" else None,
        force=force,
        model_source="builtin" if model_dir is None else str(Path(model_dir).resolve()),
        target_options=options,
        dynamic_form=dynamic_form,
        calibration=CalibrationSet.load(calib_dir) if calib_dir else None,
        keep_float=keep_float,
        batch=batch,
    )
    click.echo(f"wrote {path}")
    print_quantization(str(path))
    print_validation(str(path))
    if target == "coreml" and platform.system() != "Darwin":
        click.echo(
            "\nparity and bench skipped: Core ML prediction exists only on macOS "
            f"(this is {platform.system()}); the package was validated without running it (above)"
        )
        return
    runtime = "auto"
    if target == "tensorrt":
        runtime = "onnxruntime"  # the graphs TensorRT builds, checked here without a GPU
        click.echo(
            "\nTensorRT engines are built on the device (`mor-edge build-engines`); parity and "
            "latency below run these ONNX graphs on ONNX Runtime"
        )
    failed = False
    if not skip_parity or not skip_bench:
        engine = open_runtime(str(path), threads, runtime, "cpu")
    if not skip_parity:
        report = parity_report(engine, model, samples, 0)
        print_parity(report)
        failed = not report["passed"]
    if not skip_bench:
        print_bench(bench_report(engine, 3, 10, progress=True))
    if failed:
        raise click.ClickException("parity gates failed (see above); the artifact is kept for inspection")


# Options that only mean something with one routing or precision: (option, parameter, needs).
CONDITIONAL_OPTIONS = (
    ("--bucket-levels", "bucket_levels", ("routing", "static")),
    ("--dynamic-form", "dynamic_form", ("routing", "dynamic")),
    ("--calib", "calib_dir", ("precision", "int8")),
    ("--keep-float", "keep_float", ("precision", "int8")),
    ("--calibration-method", "calibration_method", ("precision", "int8")),
)


def refuse_unused_options(routing: str, precision: str) -> None:
    """An option given where it has no effect is a mistake to report, not to ignore silently."""
    ctx = click.get_current_context()
    chosen = {"routing": routing, "precision": precision}
    for flag, name, (axis, value) in CONDITIONAL_OPTIONS:
        given = ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
        if given and chosen[axis] != value:
            raise UserError(f"{flag} applies to --{axis} {value} only (this export is {chosen[axis]})")
