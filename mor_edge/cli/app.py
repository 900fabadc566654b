"""The command group, its exit-code and signal handling, and what every command shares:
one-line errors, options, model loading, parity and bench runs."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import UserError

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


def load_model_dir(model_dir: str | None, denoise: float | None = None) -> Any:
    """The model in `model_dir` (None: the built-in one), its config's `denoise` replaced by
    the one given."""
    from ..builtin import load_model

    try:
        model = load_model(model_dir)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if denoise is not None and denoise != model.config.denoise:
        try:
            dataclasses.replace(model.config, denoise=denoise)  # the config's own checks
        except ValueError as exc:
            raise UserError(f"--denoise {denoise}: {exc}") from None
        model.config.denoise = denoise  # in place: the model's modules hold this config
    return model


model_option = click.option(
    "--model",
    "model_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Model folder (config.json + model.safetensors). Default: the built-in model.",
)


class FiniteRange(click.FloatRange):
    """A number in [min, max]; click's own range lets nan through (every comparison with nan
    is false), which would run a command with no limit or a nan weight."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a number in the range {self._describe_range()}.", param, ctx)
        return number


denoise_option = click.option(
    "--denoise",
    type=FiniteRange(0, 1),
    default=None,
    help="0-1: how much of the finest band of colour and shading the model cleans (noise, JPEG "
    "blocks) instead of keeping the input's. 0 keeps fine texture; 1 cleans degraded photos "
    "most but smooths fine texture of good ones (measured: README, denoise). Default: the "
    "model's own (0 for the built-in model).",
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


threads_option = click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="Runtime threads, 1-256 (default: all cores).",
)
samples_option = click.option(
    "--samples", type=click.IntRange(1, 1000), default=6, show_default=True, help="Degraded held-out images."
)


def reference_for(artifact_dir: str, model_dir: str | None) -> Any:
    """The model an artifact was exported from (its manifest says where), hash-checked."""
    from mor_edge.export.manifest import Artifact
    from mor_edge.model import model_fingerprint

    manifest = Artifact(artifact_dir).checked
    recorded = manifest.model
    source = model_dir or recorded.source
    denoise = manifest.colour.denoise if manifest.colour is not None else None
    model = load_model_dir(None if source == "builtin" else source, denoise)
    if model_fingerprint(model) != recorded.hash:
        raise UserError(
            f"{artifact_dir} was exported from a different model than {source!r} "
            "(hash mismatch); pass the right one with --model"
        )
    return model


runtime_option = click.option(
    "--runtime",
    type=click.Choice(["auto", "onnxruntime", "openvino", "coreml", "tensorrt"]),
    default="auto",
    show_default=True,
    help="What runs the artifact: auto is its target's own runtime; a tensorrt artifact's ONNX "
    "also runs on onnxruntime (how it is checked without a GPU).",
)
providers_option = click.option(
    "--providers",
    default="cpu",
    show_default=True,
    help="ONNX Runtime execution providers in priority order, comma-separated: cpu, cuda, "
    "tensorrt (the GPU ones need onnxruntime-gpu); what the sessions used is reported.",
)


def runtime_options(fn: F) -> F:
    """--threads, --runtime and --providers: how a command opens an artifact."""
    return threads_option(runtime_option(providers_option(fn)))


def open_runtime(artifact_dir: str, threads: int | None, runtime: str, providers: str) -> Any:
    """The artifact on the chosen runtime (`providers` only for ONNX Runtime)."""
    from mor_edge.export.manifest import Artifact
    from mor_edge.runtimes.registry import TARGET_RUNTIMES, load_runtime

    name = None if runtime == "auto" else runtime
    chosen = name or TARGET_RUNTIMES.get(Artifact(artifact_dir).target, ("?",))[0]
    wanted = tuple(p.strip() for p in providers.split(",") if p.strip())
    if chosen != "onnxruntime":
        if wanted != ("cpu",):
            raise UserError(f"--providers is for ONNX Runtime; this artifact runs on {chosen}")
        return load_runtime(artifact_dir, threads, name)
    return load_runtime(artifact_dir, threads, name, providers=wanted)


def parity_report(runtime: Any, model: Any, samples: int, seed: int) -> dict[str, Any]:
    from mor_edge.runtimes.parity import run_parity

    report = run_parity(runtime, model, samples=samples, seed=seed)
    report["runtime"] = runtime.describe()
    return report


def bench_report(runtime: Any, warmup: int, runs: int, progress: bool) -> dict[str, Any]:
    from mor_edge.runtimes.latency import run_bench

    return run_bench(runtime, warmup=warmup, runs=runs, progress=progress)


def check_writable_folder(folder: Path) -> None:
    """Create `folder` (and parents) now, so that an unwritable place fails before the work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{folder}: output folder is not writable")
