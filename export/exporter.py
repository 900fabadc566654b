"""One `export()` for every target: stages x routing variants -> files + manifest, atomically.

The artifact is built in a temporary sibling folder and renamed into place only when every
file has been written and checked, so a failed export never leaves a half-written artifact
and a refused overwrite leaves the old one untouched. Quantized precisions take one path for
every target: the stage is exported to a float ONNX graph, the float-only nodes and kept-float
layer groups are planned (`int8.py`), and the target's quantizer writes the stage file.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

import mor_edge
from mor_edge.atomic import atomic_folder, check_destination
from mor_edge.calib.calibration_set import CalibrationSet
from mor_edge.errors import UserError
from mor_edge.model import MoRSR, model_fingerprint
from mor_edge.resize import bicubic_as_matmul
from mor_edge.routing import Buckets, clear_routing
from mor_edge.stage_contract import ROUTED_STAGES, ROUTING_MODES, STAGES, StageSpec, stage_specs

from .int8 import (
    KEEP_FLOAT_POLICIES,
    Sample,
    float_only_nodes,
    keep_float_groups,
    plan_float_nodes,
    quantizable_groups,
)
from .manifest import SCHEMA_VERSION, size_bytes, write_manifest
from .onnx_export import OnnxTarget
from .routing_plan import default_buckets, folded, sliced, stage_layers, static_plan
from .stages import StageModule

TARGETS = ("onnx", "openvino", "coreml")
QUANTIZED = ("int8", "w8")
DEFAULT_CALIBRATION_SAMPLES = 64


class Target(Protocol):
    name: str
    suffix: str
    precisions: tuple[str, ...]

    def describe(self) -> dict[str, object]: ...

    def export_stage(
        self, module: nn.Module, spec: StageSpec, path: Path, precision: str = "fp32"
    ) -> list[Path]: ...


class QuantizingTarget(Target, Protocol):
    """A target with the shared INT8 path (ONNX Runtime, OpenVINO)."""

    def quantize_stage(
        self, source: Path, path: Path, samples: list[Sample], float_nodes: set[str]
    ) -> None: ...

    def runner(self, path: Path) -> Callable[[Sample], np.ndarray]: ...

    def finish(self, path: Path, spec: StageSpec) -> list[Path]: ...


def make_target(name: str, **options: Any) -> Target:
    if name == "onnx":
        return OnnxTarget(**options)
    if name == "coreml":
        try:
            from .coreml_export import CoreMLTarget
        except ImportError:
            raise UserError("the coreml target needs coremltools (pip install 'mor-edge[coreml]')") from None
        return CoreMLTarget(**options)
    if name == "openvino":
        try:
            from .openvino_export import OpenVinoTarget
        except ImportError:
            raise UserError(
                "the openvino target needs openvino and nncf (pip install 'mor-edge[openvino]')"
            ) from None
        return OpenVinoTarget(**options)
    raise UserError(f"unknown target {name!r} (available: {', '.join(TARGETS)})")


def _job_list(model: MoRSR, routing: str, buckets: Buckets | None) -> list[dict[str, Any]]:
    """(stage, variant) pairs to export, with the mask to fold for static routed stages."""
    plan = static_plan(model, buckets) if routing == "static" and buckets is not None else None
    jobs = []
    for stage in STAGES:
        if plan is not None and stage in ROUTED_STAGES:
            for v, variant in enumerate(plan.variants[stage]):
                jobs.append(
                    {
                        "stage": stage,
                        "variant": v,
                        "buckets": variant.buckets,
                        "weights": variant.rank_weights,
                    }
                )
        else:
            jobs.append({"stage": stage, "variant": 0, "buckets": None, "weights": None})
    if plan is not None:
        for job in jobs:
            if job["stage"] in ROUTED_STAGES:
                job["bucket_variant"] = plan.bucket_variant(job["stage"])
    return jobs


def stage_precision(stage: str, precision: str) -> str:
    """The router always runs in FP32: it is tiny (under 1 ms), and its scores pick the
    bucket and the experts; in FP16 a trained model's scores near a bucket boundary flipped
    the routing of half the parity images."""
    return "fp32" if stage == "router" else precision


def _grid_calibration(model: MoRSR, buckets: Buckets | None, routing: str, progress: bool) -> CalibrationSet:
    """A default calibration set for an export given none (its buckets must be a grid)."""
    from mor_edge.calib.sampling import build_calibration_set

    k = len(model.config.prompt_pairs)
    levels = 2
    if buckets is not None:
        levels = max(1, round(len(buckets) ** (1 / k)))
        if not torch.equal(Buckets.grid(levels, k).centres, buckets.centres):
            raise UserError("these buckets are not a grid: pass a calibration set made for them")
    return build_calibration_set(
        model, DEFAULT_CALIBRATION_SAMPLES, bucket_levels=levels, routings=(routing,), progress=progress
    )


class _Quantization:
    """The quantized-precision state of one export: calibration inputs, and the float-node
    plan made on each stage's first graph and reused for its other variants (same names)."""

    def __init__(
        self,
        target: QuantizingTarget,
        precision: str,
        routing: str,
        calibration: CalibrationSet | None,
        keep_float: str,
        scratch: Path,
        onnx_target: OnnxTarget,
    ) -> None:
        self.target, self.precision, self.routing = target, precision, routing
        self.calibration, self.keep_float, self.scratch = calibration, keep_float, scratch
        self.onnx_target = onnx_target
        self.plans: dict[str, tuple[set[str], dict[str, Any]]] = {}

    def write(
        self, module: nn.Module, spec: StageSpec, stage: str, path: Path, buckets: list[int] | None
    ) -> list[Path]:
        source = self.scratch / f"{path.stem}.float.onnx"
        self.onnx_target.export_stage(module, spec, source, "fp32")
        if self.precision == "w8":
            if stage not in self.plans:
                graph = onnx.load(str(source), load_external_data=False).graph
                groups = quantizable_groups(graph)
                nodes = float_only_nodes(graph) | {
                    n for g in keep_float_groups("default", groups) for n in groups[g]
                }
                self.plans[stage] = (nodes, {"mode": "weights only, INT8 asymmetric"})
            self.target.compress_weights(source, path, self.plans[stage][0])  # type: ignore[attr-defined]
            return self.target.finish(path, spec)
        assert self.calibration is not None
        samples = self.calibration.stage_inputs(spec, self.routing, buckets)
        if not samples:
            raise UserError(f"the calibration set has no samples for {stage} buckets {buckets}")
        if stage not in self.plans:
            self.plans[stage] = plan_float_nodes(
                self.target, source, samples, self.keep_float, self.scratch, self.onnx_target.runner(source)
            )
            self.plans[stage][1]["calibration_samples"] = len(samples)
        self.target.quantize_stage(source, path, samples, self.plans[stage][0])
        return self.target.finish(path, spec)


def export(
    model: MoRSR,
    out: str | Path,
    target: str = "onnx",
    routing: str = "static",
    precision: str | None = None,
    buckets: Buckets | None = None,
    force: bool = False,
    model_source: str = "builtin",
    target_options: dict[str, Any] | None = None,
    dynamic_form: str | None = None,
    calibration: CalibrationSet | None = None,
    keep_float: str = "default",
    progress: bool = True,
) -> Path:
    """Export every stage of `model` to `out` for `target`; returns the artifact folder.

    Quantized precisions use `calibration` (made here with defaults when not given) and the
    `keep_float` policy. Dynamic routing uses the `fold` form by default, `gather` when
    quantized (folded weights are computed from `s` and would stay in float)."""
    if routing not in ROUTING_MODES:
        raise UserError(f"routing must be one of {', '.join(ROUTING_MODES)}")
    if keep_float not in KEEP_FLOAT_POLICIES:
        raise UserError(f"keep-float must be one of {', '.join(KEEP_FLOAT_POLICIES)}")
    tgt = make_target(target, **(target_options or {}))
    precision = precision or getattr(tgt, "default_precision", "fp32")
    if precision not in tgt.precisions:
        raise UserError(f"precision must be one of {', '.join(tgt.precisions)} for the {target} target")
    out = Path(out)
    check_destination(out, force)
    form = dynamic_form or ("gather" if precision in QUANTIZED else "fold")
    if routing == "static" and buckets is None:
        buckets = default_buckets(model)
    fingerprint = model_fingerprint(model)
    if precision == "w8a8" and target == "coreml":
        from mor_edge.runtimes.coreml_runtime import require_macos

        require_macos("W8A8 activation calibration (coremltools runs the model on sample data)")
    if precision in ("int8", "w8a8"):
        if calibration is None:
            calibration = _grid_calibration(model, buckets, routing, progress)
        calibration.check_for(fingerprint, buckets.to_list() if buckets is not None else None, routing)
        if hasattr(tgt, "calibration"):
            tgt.calibration, tgt.routing = calibration, routing  # type: ignore[attr-defined]
    specs = stage_specs(model.config, routing)
    jobs = _job_list(model, routing, buckets)
    static_weights = getattr(tgt, "static_weights", "folded")
    resize = bicubic_as_matmul if getattr(tgt, "bicubic_as_matmul", False) else nullcontext
    if hasattr(tgt, "combine_variants") and any(job["variant"] > 0 for job in jobs):
        tgt.deployment_target = "iOS18"  # type: ignore[attr-defined]  # multifunction needs iOS 18
    onnx_target = OnnxTarget(**{k: v for k, v in (target_options or {}).items() if k == "exporter"})

    with (
        atomic_folder(out, force, kind="artifact") as tmp,
        tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.scratch-{os.getpid()}-") as scratch,
    ):
        quantization = _Quantization(
            cast(QuantizingTarget, tgt),
            precision,
            routing,
            calibration,
            keep_float,
            Path(scratch),
            onnx_target,
        )
        stages: dict[str, dict[str, Any]] = {
            name: {
                **specs[name].to_dict(),
                "precision": stage_precision(name, precision),
                "variants": [],
            }
            for name in STAGES
        }
        model.eval()
        clear_routing(model.layers())
        for job in tqdm(
            jobs, desc=f"export {target} {routing} {precision}", disable=not progress, unit="graph"
        ):
            stage, spec = job["stage"], specs[job["stage"]]
            name = (
                f"{stage}{tgt.suffix}" if job["buckets"] is None else f"{stage}.v{job['variant']}{tgt.suffix}"
            )
            fixed: Any = nullcontext()
            if job["weights"] and static_weights == "sliced":
                assert buckets is not None
                fixed = sliced(stage_layers(model, stage), buckets.centres[job["buckets"][0]])
            elif job["weights"]:
                fixed = folded(stage_layers(model, stage), job["weights"])
            with fixed, resize():
                module: nn.Module = StageModule(model, stage, routing, form)
                this_precision = stage_precision(stage, precision)
                if this_precision in QUANTIZED and hasattr(tgt, "quantize_stage"):
                    quantization.write(module, spec, stage, tmp / name, job["buckets"])
                else:
                    tgt.export_stage(module, spec, tmp / name, this_precision)
            entry = stages[stage]
            entry["variants"].append({"file": name, "buckets": job["buckets"]})
            reports = getattr(tgt, "reports", {})
            if name in reports:
                entry["variants"][-1]["validation"] = reports[name]
            if "bucket_variant" in job:
                entry["bucket_variant"] = job["bucket_variant"]
        if hasattr(tgt, "combine_variants"):
            _combine_variants(tgt, tmp, stages)
        for stage, (_, report) in quantization.plans.items():
            stages[stage]["quantization"] = report
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created_by": {
                "mor_edge": mor_edge.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                **tgt.describe(),
            },
            "model": {
                "name": model.config.name,
                "label": model.config.label,
                "hash": fingerprint,
                "source": model_source,
            },
            "target": target,
            "precision": precision,
            "routing": {
                "mode": routing,
                "dynamic_form": form if routing == "dynamic" else None,
                "buckets": buckets.to_list() if routing == "static" and buckets is not None else None,
                "rule": "nearest centre, squared Euclidean distance in float64, ties to the lower index",
                "degradation_names": model.config.degradation_names,
            },
            "calibration": _calibration_summary(calibration) if precision in ("int8", "w8a8") else None,
            "scale": model.config.scale,
            "colour": {
                "fix": model.config.colour_fix,
                "levels": model.config.colour_levels,
                "residual": model.config.residual,
                "where": "in the decoder stage's graph (input lr)" if model.config.decoder_takes_lr else None,
                "tile_margin": model.config.colour_margin,
            },
            "stages": stages,
            "sizes_bytes": {p.name: size_bytes(p) for p in sorted(tmp.iterdir())},
        }
        write_manifest(tmp, manifest)
    return out


def _combine_variants(tgt: Any, folder: Path, stages: dict[str, dict[str, Any]]) -> None:
    """Targets with multifunction files (Core ML): a stage's variants become the functions
    `v0`, `v1`, ... of one file."""
    for stage, entry in stages.items():
        variants = entry["variants"]
        if len(variants) < 2:
            continue
        paths = [folder / v["file"] for v in variants]
        combined = f"{stage}{tgt.suffix}"
        functions = [f"v{i}" for i in range(len(variants))]
        tgt.combine_variants(paths, folder / combined, functions)
        for path in paths:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for variant, function in zip(variants, functions, strict=True):
            variant["file"], variant["function"] = combined, function


def _calibration_summary(calibration: CalibrationSet | None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    keys = ("seed", "samples", "pool_size", "images", "bucket_levels", "pool_natural")
    per_bucket = np.bincount(calibration.bucket.numpy(), minlength=len(calibration.recipe["buckets"]))
    return {**{k: calibration.recipe[k] for k in keys}, "samples_per_bucket": per_bucket.tolist()}
