"""The `mor-edge` command line."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
# The largest tile: the VAE mid-block attends over (tile * scale / 4)^2 latent tokens in the
# reference (65536 at 256), time growing with their square.
MAX_REFERENCE_TILE = 256


# An optional package a command needs -> the extra that installs it. A runtime-only install
# (`pip install "mor-edge[onnx]"`) has no PyTorch: the commands that need the reference say so.
EXTRAS = {
    "torch": "reference",
    "diffusers": "reference",
    "transformers": "reference",
    "safetensors": "reference",
    "onnx": "reference",
    "onnxscript": "reference",
    "nncf": "reference",
    "onnxruntime": "onnx",
    "openvino": "openvino",
    "coremltools": "coreml",
    "skimage": "train",
    "scipy": "train",
    "matplotlib": "train",
}


def user_errors(fn: F) -> F:
    """Turn a `UserError` into click's one-line 'Error: ...' and exit code 1; a missing
    optional package into the extra that installs it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if top not in EXTRAS:
                raise
            what = "the PyTorch reference and exporters" if EXTRAS[top] == "reference" else top
            raise click.ClickException(
                f"`{fn.__name__.replace('_command', '')}` needs {what} ({top} is not installed): "
                f"pip install 'mor-edge[{EXTRAS[top]}]'"
            ) from None

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


class Interrupted(BaseException):
    """SIGTERM or SIGHUP, raised where Python runs next so that cleanup blocks run as for
    Ctrl-C (temporary files and folders are removed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


class MorEdgeCLI(click.Group):
    """Exit codes: 0 done, 1 any user mistake (Click's usage errors included), 128 + N when
    stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), each with one line."""

    def main(  # type: ignore[override]
        self, args: Any = None, prog_name: str | None = None, **kwargs: Any
    ) -> Any:
        import signal
        import sys
        import threading

        kwargs.pop("standalone_mode", None)
        main_thread = threading.current_thread() is threading.main_thread()  # signal() needs it
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP) if main_thread}
        for sig in previous:
            signal.signal(sig, _raise_interrupted)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            exc.show()
            code = 1
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("\ninterrupted (SIGINT); temporary files removed", err=True)
            code = 128 + signal.SIGINT
        except Interrupted as exc:
            click.echo(
                f"\ninterrupted ({signal.Signals(exc.signum).name}); temporary files removed", err=True
            )
            code = 128 + exc.signum
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=MorEdgeCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mor-edge")
def main() -> None:
    """mor-edge: Mixture-of-Ranks one-step diffusion super-resolution for edge runtimes.

    Every command uses the built-in tiny model unless given a model folder.
    """


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
        click.echo(json.dumps(summary, indent=2) if as_json else _artifact_table(summary))
        return
    from .report import model_report

    report = model_report(_load(folder))
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


def _artifact_table(report: dict[str, Any]) -> str:
    model = report["model"]
    lines = [
        f"artifact  {report['folder']}",
        f"target    {report['target']}, {report['precision']}, {report['routing']} routing"
        + (f" ({report['buckets']} buckets)" if report["buckets"] else ""),
        f"model     {model['name']}  {model['label']}  sha256 {model['hash'][:12]}".rstrip(),
        f"size      LR {report['tile']}x{report['tile']} tiles, x{report['scale']}",
        "",
        f"  {'stage':<9}{'precision':<11}{'variants':>8}  inputs -> outputs",
    ]
    for name, stage in report["stages"].items():
        io = ", ".join(stage["inputs"]) + " -> " + ", ".join(stage["outputs"])
        lines.append(f"  {name:<9}{stage['precision']:<11}{stage['variants']:>8}  {io}")
    lines.append(f"\n{report['files']} files, {report['bytes'] / 1e6:.1f} MB, every sha256 verified")
    return "\n".join(lines)


threads_option = click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="Runtime threads, 1-256 (default: all cores).",
)
samples_option = click.option(
    "--samples", type=click.IntRange(1, 1000), default=6, show_default=True, help="Degraded held-out images."
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
@threads_option
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
) -> None:
    """Super-resolve IN (PNG, JPEG, WebP, TIFF, BMP; any size) to OUT, whose extension sets
    the format. With a folder IN, every file in it goes to the folder OUT; failures are
    reported per file and the rest go on. Tiled: memory is bounded by the tile, not the image."""
    from .upscale import TileOptions, batch_outputs, upscale_file

    engine: Any
    note = ""
    if artifact is not None:
        from mor_edge.runtimes.registry import load_runtime

        if norm == "whole":
            raise UserError("--norm whole needs the PyTorch reference: artifacts have fixed graphs")
        if model_dir is not None:
            raise UserError("--model and --artifact exclude each other: an artifact holds its model")
        engine = load_runtime(artifact, threads)
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
        from .reference_engine import ReferenceEngine

        model = _load(model_dir)
        note = model.config.label
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
        if note:
            click.echo(f"note: {note}", err=True)
        return
    failures = 0
    for file_in, file_out in batch_outputs(src, Path(output_path), out_suffix):
        try:
            size_in, size_out = upscale_file(file_in, file_out, engine, options)
            click.echo(f"{file_in} ({size_in}) -> {file_out} ({size_out})")
        except UserError as exc:
            failures += 1
            click.echo(f"failed: {exc}", err=True)
    if failures:
        raise UserError(f"{failures} of the files in {src} failed (see above)")


def _reference_for(artifact_dir: str, model_dir: str | None) -> Any:
    """The model an artifact was exported from (its manifest says where), hash-checked."""
    from mor_edge.export.manifest import Artifact
    from mor_edge.model import model_fingerprint

    recorded = Artifact(artifact_dir).checked.model
    source = model_dir or recorded.source
    model = _load(None if source == "builtin" else source)
    if model_fingerprint(model) != recorded.hash:
        raise UserError(
            f"{artifact_dir} was exported from a different model than {source!r} "
            "(hash mismatch); pass the right one with --model"
        )
    return model


def _print_parity(report: dict[str, Any]) -> None:
    click.echo(f"\nparity ({report['precision']}, {report['routing']} routing, {report['samples']} images)")
    click.echo(f"  {'stage':<12}{'max_abs':>12}{'scaled':>12}{'PSNR dB':>10}")
    for stage in ("router", "encoder", "unet", "decoder", "end_to_end"):
        r = report[stage]
        click.echo(f"  {stage:<12}{r['max_abs']:>12.3g}{r['max_abs_scaled']:>12.3g}{r['psnr_db']:>10.1f}")
    click.echo(f"  routing agreement {report['routing_agreement']:.3f} ({report['routing_agreement_kind']})")
    click.echo(f"  static bucketing vs exact routing (reference): {report['bucketing_cost_psnr_db']:.1f} dB")
    hr = report["hr_psnr_y_db"]
    click.echo(
        f"  PSNR-Y against HR: reference {hr['reference']:.2f} dB, runtime {hr['runtime']:.2f} dB "
        f"({report['hr_psnr_delta_db']:+.2f} dB)"
    )
    click.echo("  PASSED" if report["passed"] else "  FAILED: " + "; ".join(report["failures"]))


def _print_bench(report: dict[str, Any]) -> None:
    click.echo(
        f"\nlatency ({report['runtime']} {report.get('version', '')}, {report['threads']} threads, "
        f"{report['precision']}, {report['routing']}; median of {report['end_to_end']['runs']} runs)"
    )
    click.echo(f"  {'stage':<12}{'median ms':>11}{'p90 ms':>10}")
    for name, r in [*report["stages"].items(), ("end_to_end", report["end_to_end"])]:
        click.echo(f"  {name:<12}{r['median_ms']:>11.2f}{r['p90_ms']:>10.2f}")


def _parity(artifact_dir: str, model: Any, samples: int, seed: int, threads: int | None) -> dict[str, Any]:
    from mor_edge.runtimes.parity import run_parity
    from mor_edge.runtimes.registry import load_runtime

    return run_parity(load_runtime(artifact_dir, threads), model, samples=samples, seed=seed)


def _bench(artifact_dir: str, warmup: int, runs: int, threads: int | None, progress: bool) -> dict[str, Any]:
    from mor_edge.runtimes.latency import run_bench
    from mor_edge.runtimes.registry import load_runtime

    return run_bench(load_runtime(artifact_dir, threads), warmup=warmup, runs=runs, progress=progress)


@main.command("export")
@click.option(
    "--target",
    type=click.Choice(["onnx", "openvino", "coreml"]),
    default="onnx",
    show_default=True,
    help="coreml converts and validates on any OS; parity and bench need macOS.",
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
    type=click.Choice(["fp32", "fp16", "int8", "w8", "palette6", "w8a8"]),
    default=None,
    help="Default: fp16 for coreml, fp32 otherwise. int8 (onnx, openvino): weights and "
    "activations, calibrated, the router stays in float; w8: 8-bit weights only (openvino, "
    "coreml); palette6: 6-bit palettized weights (coreml); w8a8: coreml activation "
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
    help="INT8 with the onnx target: how activation ranges are computed. percentile is more "
    "accurate (measured) but slower to export (2.4x for one bucket of tiny; more with many graphs).",
)
@click.option(
    "--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True
)
@model_option
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
    exporter: str,
    model_dir: str | None,
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
    from mor_edge.export.exporter import export
    from mor_edge.export.routing_plan import default_buckets

    model = _load(model_dir)
    precision = precision or ("fp16" if target == "coreml" else "fp32")  # export()'s defaults
    options: dict[str, Any] = {} if target == "coreml" else {"exporter": exporter}  # coreml traces itself
    if calibration_method != "minmax":
        if target != "onnx":
            raise UserError("--calibration-method applies to the onnx target (NNCF picks its own ranges)")
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
    )
    click.echo(f"wrote {path}")
    _print_quantization(str(path))
    _print_validation(str(path))
    if target == "coreml" and platform.system() != "Darwin":
        click.echo(
            "\nparity and bench skipped: Core ML prediction exists only on macOS "
            f"(this is {platform.system()}); the package was validated without running it (above)"
        )
        return
    failed = False
    if not skip_parity:
        report = _parity(str(path), model, samples, 0, threads)
        _print_parity(report)
        failed = not report["passed"]
    if not skip_bench:
        _print_bench(_bench(str(path), 3, 10, threads, progress=True))
    if failed:
        raise click.ClickException("parity gates failed (see above); the artifact is kept for inspection")


def _print_validation(artifact_dir: str) -> None:
    """Checks made without running the model (Core ML): weights, ops, sizes."""
    from mor_edge.export.manifest import Artifact

    manifest = Artifact(artifact_dir, verify=False).manifest
    rows = [
        (stage, v.get("function") or "-", v["validation"])
        for stage, entry in manifest["stages"].items()
        for v in entry["variants"]
        if "validation" in v
    ]
    if not rows:
        return
    click.echo(f"\nvalidation ({manifest['precision']}, no runtime needed)")
    click.echo(
        f"  {'stage':<9}{'function':<10}{'weights':>8}{'max rel err':>13}{'size MB':>9}  not on Neural Engine"
    )
    for stage, function, v in rows:
        w = v["weights"]
        flagged = ", ".join(v["ops"]["not_on_neural_engine"]) or "-"
        click.echo(
            f"  {stage:<9}{function:<10}{w['compared']:>8}{w['max_relative_error']:>13.2e}"
            f"{v['size_bytes'] / 1e6:>9.2f}  {flagged}"
        )
    sizes = manifest.get("sizes_bytes", {})
    for name, size in sizes.items():
        click.echo(f"  {name}: {size / 1e6:.2f} MB on disk")


def _print_quantization(artifact_dir: str) -> None:
    """What a quantized export kept in float, and its sensitivity table where one was made."""
    from mor_edge.export.manifest import Artifact

    manifest = Artifact(artifact_dir, verify=False).manifest
    for stage, entry in manifest["stages"].items():
        q = entry.get("quantization")
        if not q:
            continue
        kept = ", ".join(q.get("keep_float_groups", [])) or "none"
        click.echo(
            f"\n{stage}: {entry['precision']}, {q.get('quantized_nodes', '?')} nodes quantized, "
            f"kept in float: {kept}"
        )
        for row in q.get("sensitivity", []):
            mark = "  <- kept in float" if row["group"] in q["keep_float_groups"] else ""
            click.echo(f"  {row['group']:<44}{row['psnr_db']:>8.1f} dB{mark}")


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
) -> None:
    """Build an INT8 calibration set: degraded crops stratified so every static bucket gets
    samples, each stage's inputs captured from the reference, saved with its recipe."""
    from mor_edge.atomic import check_destination, claim
    from mor_edge.calib.sampling import build_calibration_set, coverage
    from mor_edge.image_io import folder_images

    check_destination(Path(out), force)
    with claim(Path(out)):  # a second calibrate into OUT fails now, not after the sampling
        model = _load(model_dir)
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


@main.command()
@click.argument("artifact", type=click.Path(file_okay=False))
@model_option
@samples_option
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def parity(
    artifact: str, model_dir: str | None, samples: int, seed: int, threads: int | None, as_json: bool
) -> None:
    """Compare ARTIFACT with the PyTorch reference per stage and end to end on seeded degraded
    held-out photos; exit 1 if a gate fails."""
    report = _parity(artifact, _reference_for(artifact, model_dir), samples, seed, threads)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_parity(report)
    if not report["passed"]:
        raise SystemExit(1)


@main.command()
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--warmup", type=click.IntRange(0, 1000), default=3, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10000), default=10, show_default=True)
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def bench(artifact: str, warmup: int, runs: int, threads: int | None, as_json: bool) -> None:
    """Single-step latency of ARTIFACT per stage and end to end: warm-up, then median and p90."""
    report = _bench(artifact, warmup, runs, threads, progress=not as_json)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_bench(report)


@main.command()
@click.option("--preset", type=click.Choice(["tiny", "sd21"]), default="tiny", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="runs/tiny",
    show_default=True,
    help="Run folder: log.jsonl, checkpoint/ (resumed automatically), model/ at the end.",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option(
    "--sd",
    "sd_folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Local Stable Diffusion folder: start from its weights (only the MoR stage trains).",
)
@click.option(
    "--clip",
    "clip_folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Local CLIP folder for --sd (zero-shot degradation scores).",
)
@click.option(
    "--images",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of HR training images (default: the built-in photos' training split).",
)
@click.option("--estimator-steps", type=click.IntRange(0, 1_000_000), default=None)
@click.option("--base-steps", type=click.IntRange(0, 1_000_000), default=None)
@click.option("--mor-steps", type=click.IntRange(0, 1_000_000), default=None)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=None)
@click.option(
    "--hr-size", type=click.IntRange(32, 1024), default=None, help="HR crop side (a multiple of 32, 32-1024)."
)
@click.option("--fresh", is_flag=True, help="Ignore an existing checkpoint in --out.")
@user_errors
def train(
    preset: str,
    out: str,
    seed: int,
    sd_folder: str | None,
    clip_folder: str | None,
    images: str | None,
    estimator_steps: int | None,
    base_steps: int | None,
    mor_steps: int | None,
    batch_size: int | None,
    hr_size: int | None,
    fresh: bool,
) -> None:
    """Train a MoR model: CLIP-form estimator, dense base, then MoR experts (tiny preset from
    scratch: `mor-edge train --preset tiny` reproduces the built-in model). With --sd and
    --clip only the MoR experts train, on pretrained weights, CLIP zero-shot."""
    import shutil

    from .atomic import MARKER, made_by_us
    from .model import MoRSR
    from .training import TrainConfig, Trainer, initial_model

    overrides: dict[str, Any] = {
        k: v
        for k, v in dict(
            estimator_steps=estimator_steps,
            base_steps=base_steps,
            mor_steps=mor_steps,
            batch_size=batch_size,
            hr_size=hr_size,
        ).items()
        if v is not None
    }
    if hr_size is not None and hr_size % 32:
        raise UserError("--hr-size must be a multiple of 32")
    config = TrainConfig(seed=seed, images=images, **overrides)
    if images is not None and not Path(images).is_dir():
        raise UserError(f"{images}: no such folder")
    if sd_folder is not None and clip_folder is None:
        raise UserError("--sd needs --clip (a local CLIP folder for the degradation scores)")
    run = Path(out)
    if run.exists() and not (run.is_dir() and made_by_us(run)):
        raise UserError(
            f"{run} is not a run folder mor-edge made (no {MARKER} file in it) and not empty; "
            "choose another --out"
        )
    resume = not fresh and (run / "checkpoint" / "config.json").is_file()
    if resume:
        model = MoRSR.from_pretrained(run / "checkpoint")
        click.echo(f"resuming from {run / 'checkpoint'}")
    elif sd_folder is not None:
        assert clip_folder is not None
        from .config import PRESETS

        try:
            model = MoRSR.from_diffusers(sd_folder, clip_folder, PRESETS[preset]())
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc)) from None
        config.estimator_steps = config.base_steps = 0
    else:
        model = initial_model(preset, seed)
    if fresh and run.exists():  # every check has passed, and the folder is one of our runs
        shutil.rmtree(run)
    trained = Trainer(model, config, run).run()
    trained.save_pretrained(run / "model")
    click.echo(f"wrote {run / 'model'} (log: {run / 'log.jsonl'})")


@main.command()
@click.argument("model_dir", required=False, type=click.Path(file_okay=False))
@click.option(
    "--images",
    "count",
    type=click.IntRange(3, 10_000),
    default=90,
    show_default=True,
    help="Held-out degraded images (severities cycle mild/moderate/severe; 90 gives 30 per "
    "level: with 10 per level, the per-level means of experts and scores are mostly noise).",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=1234, show_default=True)
@click.option(
    "--photos",
    "photos_dir",
    type=click.Path(file_okay=False),
    help="Folder of HR photos to crop and degrade (e.g. the validation set of a dataset you "
    "trained on with `train --images`); default: the built-in held-out photos.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="out/evaluate",
    show_default=True,
    help="Where the plot and the image grid go.",
)
@click.option(
    "--lr-only",
    is_flag=True,
    help="Treat the photos as real LR images without HR: crops are upscaled, brought back to "
    "the LR grid and compared in colour (CIEDE2000) with the input, against bicubic.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def evaluate(
    model_dir: str | None,
    count: int,
    seed: int,
    photos_dir: str | None,
    out: str,
    lr_only: bool,
    as_json: bool,
) -> None:
    """Evaluate MODEL_DIR (default: built-in) on held-out photos: per severity, PSNR-Y and
    SSIM-Y (border cropped) and CIEDE2000 colour difference against HR for SR and bicubic, the
    colour difference of SR brought back to the LR grid against the input, Spearman of each
    score with its degradation, active experts by severity. Writes active_experts.png and
    grid.png to --out (grid.png only with --lr-only)."""
    from .evaluation import evaluate as run_evaluate
    from .evaluation import evaluate_lr_only, plot_active_experts, save_grid
    from .image_io import folder_images
    from .photos import evaluation_photos

    model = _load(model_dir)
    folder = Path(out)
    _check_writable_folder(folder)
    named = folder_images(photos_dir) if photos_dir else evaluation_photos()
    photos = list(named.values())
    source = photos_dir or f"held-out ({', '.join(named)})"
    if lr_only:
        report, lr, sr = evaluate_lr_only(model, photos, count=count, seed=seed)
        report["photos"] = source
        save_grid(lr, sr, model.config.scale, folder / "grid.png")
        report["plots"] = {"grid": str(folder / "grid.png")}
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return
        click.echo(f"photos: {source}, {count} LR crops (seed {seed})")
        click.echo(
            f"CIEDE2000 of the x{model.config.scale} round trip against the input: "
            f"SR {report['ciede_sr_vs_lr']:.2f}   bicubic {report['ciede_bicubic_vs_lr']:.2f}"
        )
        click.echo(f"grid: {folder / 'grid.png'}")
        return
    report, pairs, sr = run_evaluate(model, count=count, seed=seed, photos=photos)
    report["photos"] = source
    plot_active_experts(report, folder / "active_experts.png")
    save_grid(pairs.lr, sr, model.config.scale, folder / "grid.png", hr=pairs.hr, labels=pairs.severities)
    report["plots"] = {"active_experts": str(folder / "active_experts.png"), "grid": str(folder / "grid.png")}
    if as_json:
        per_image = [k for k in report if k.endswith("per_image")] + ["severities"]
        click.echo(json.dumps({k: v for k, v in report.items() if k not in per_image}, indent=2))
        return
    click.echo(f"model {model.config.name} {model.config.label}".rstrip())
    click.echo(f"photos: {source}, {count} degraded crops (seed {seed})")
    click.echo(_quality_table(report))
    click.echo(
        "Spearman(score, degradation): "
        + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in report["spearman"].items())
    )
    click.echo(
        "active routed experts: "
        + ", ".join(f"{k} {v:.2f}" for k, v in report["active_experts_by_severity"].items())
    )
    click.echo(f"plots: {folder / 'active_experts.png'}, {folder / 'grid.png'}")


def _check_writable_folder(folder: Path) -> None:
    """Create `folder` (and parents) now, so that an unwritable place fails before the work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{folder}: output folder is not writable")


def _quality_table(report: dict[str, Any]) -> str:
    """Per severity and overall: PSNR-Y, SSIM-Y, CIEDE2000 vs HR, CIEDE2000 vs LR (SR / bicubic)."""
    rows = [("", "PSNR-Y dB", "SSIM-Y", "CIEDE2000 vs HR", "CIEDE2000 vs LR")]
    for name, m in [*report["by_severity"].items(), ("all", report)]:
        rows.append(
            (
                name,
                f"{m['psnr_sr']:.2f} / {m['psnr_bicubic']:.2f}",
                f"{m['ssim_sr']:.3f} / {m['ssim_bicubic']:.3f}",
                f"{m['ciede_sr']:.2f} / {m['ciede_bicubic']:.2f}",
                f"{m['ciede_sr_vs_lr']:.2f} / {m['ciede_bicubic_vs_lr']:.2f}",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, "(SR / bicubic)"])


if __name__ == "__main__":
    main()
