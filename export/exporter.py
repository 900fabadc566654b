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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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

from .capabilities import (
    ExportSettings,
    MultifunctionTarget,
    QuantizingTarget,
    Target,
    WeightCompressingTarget,
)
from .group_norm import group_norm_as_reductions
from .int8 import (
    KEEP_FLOAT_POLICIES,
    float_only_nodes,
    keep_float_groups,
    plan_float_nodes,
    quantizable_groups,
)
from .manifest import SCHEMA_VERSION, size_bytes, write_manifest
from .onnx_export import OnnxTarget
from .routing_plan import default_buckets, folded, sliced, stage_layers, static_plan
from .stages import StageModule

TARGETS = ("onnx", "openvino", "coreml", "tensorrt")
QUANTIZED = ("int8", "w8")
DEFAULT_CALIBRATION_SAMPLES = 64


def make_target(name: str, **options: Any) -> Target:
    """The target object for `name`; its module is imported only when asked for."""
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
    if name == "tensorrt":
        try:
            from .tensorrt_export import TensorRTTarget
        except ImportError:
            raise UserError(
                "the tensorrt target needs NVIDIA ModelOpt (pip install 'mor-edge[tensorrt]')"
            ) from None
        return TensorRTTarget(**options)
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
        target: Target,
        precision: str,
        routing: str,
        calibration: CalibrationSet | None,
        keep_float: str,
        scratch: Path,
        onnx_target: OnnxTarget,
    ) -> None:
        self.target = cast(QuantizingTarget, target)
        self.precision, self.routing = precision, routing
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
            cast(WeightCompressingTarget, self.target).compress_weights(source, path, self.plans[stage][0])
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


@dataclass
class ExportPlan:
    """Everything an export decided before writing anything: the target, precision, routing
    form, buckets, calibration, stage contracts and the (stage, variant) jobs."""

    target: Target
    target_name: str
    precision: str
    routing: str
    form: str
    buckets: Buckets | None
    calibration: CalibrationSet | None
    keep_float: str
    specs: dict[str, StageSpec]
    jobs: list[dict[str, Any]]
    fingerprint: str
    model_source: str
    onnx_target: OnnxTarget


def plan_export(
    model: MoRSR,
    target: str = "onnx",
    routing: str = "static",
    precision: str | None = None,
    buckets: Buckets | None = None,
    model_source: str = "builtin",
    target_options: dict[str, Any] | None = None,
    dynamic_form: str | None = None,
    calibration: CalibrationSet | None = None,
    keep_float: str = "default",
    progress: bool = True,
    batch: int = 1,
) -> ExportPlan:
    """Check the options against the target's declared capabilities and decide everything
    (a default calibration set is built here when a quantized precision needs one)."""
    if routing not in ROUTING_MODES:
        raise UserError(f"routing must be one of {', '.join(ROUTING_MODES)}")
    if keep_float not in KEEP_FLOAT_POLICIES:
        raise UserError(f"keep-float must be one of {', '.join(KEEP_FLOAT_POLICIES)}")
    tgt = make_target(target, **(target_options or {}))
    caps = tgt.capabilities
    precision = precision or caps.default_precision
    if precision not in caps.precisions:
        raise UserError(f"precision must be one of {', '.join(caps.precisions)} for the {target} target")
    if batch != 1 and not caps.batched:
        raise UserError(f"the {target} target takes one tile per call (--batch 1), not {batch}")
    if routing == "static" and buckets is None:
        buckets = default_buckets(model)
    fingerprint = model_fingerprint(model)
    if precision == "w8a8":
        from mor_edge.runtimes.coreml_runtime import require_macos

        require_macos("W8A8 activation calibration (coremltools runs the model on sample data)")
    if precision in ("int8", "w8a8"):
        if calibration is None:
            calibration = _grid_calibration(model, buckets, routing, progress)
        calibration.check_for(fingerprint, buckets.to_list() if buckets is not None else None, routing)
    jobs = _job_list(model, routing, buckets)
    tgt.configure(
        ExportSettings(
            routing=routing,
            precision=precision,
            calibration=calibration,
            combine_variants=caps.multifunction and any(job["variant"] > 0 for job in jobs),
        )
    )
    return ExportPlan(
        target=tgt,
        target_name=target,
        precision=precision,
        routing=routing,
        form=dynamic_form or ("gather" if precision in QUANTIZED else "fold"),
        buckets=buckets,
        calibration=calibration,
        keep_float=keep_float,
        specs=stage_specs(model.config, routing, batch),
        jobs=jobs,
        fingerprint=fingerprint,
        model_source=model_source,
        onnx_target=OnnxTarget(**{k: v for k, v in (target_options or {}).items() if k == "exporter"}),
    )


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
    batch: int = 1,
) -> Path:
    """Export every stage of `model` to `out` for `target`; returns the artifact folder.

    Plans (`plan_export`), writes the stage files (`build_stages`) and the manifest
    (`manifest_for`) in a temporary folder that replaces `out` only when all is written.
    Quantized precisions use `calibration` (made here with defaults when not given) and the
    `keep_float` policy. Dynamic routing uses the `fold` form by default, `gather` when
    quantized (folded weights are computed from `s` and would stay in float). The image
    stages take `batch` tiles per call (the router one image)."""
    out = Path(out)
    check_destination(out, force)
    plan = plan_export(
        model,
        target,
        routing,
        precision,
        buckets,
        model_source,
        target_options,
        dynamic_form,
        calibration,
        keep_float,
        progress,
        batch,
    )
    with (
        atomic_folder(out, force, kind="artifact") as tmp,
        tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.scratch-{os.getpid()}-") as scratch,
    ):
        stages = build_stages(plan, model, tmp, Path(scratch), progress)
        write_manifest(tmp, manifest_for(plan, model, stages, tmp))
    return out


def build_stages(
    plan: ExportPlan, model: MoRSR, folder: Path, scratch: Path, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Write every (stage, variant) file into `folder`; returns the manifest's stage entries."""
    tgt, caps = plan.target, plan.target.capabilities
    quantization = _Quantization(
        tgt, plan.precision, plan.routing, plan.calibration, plan.keep_float, scratch, plan.onnx_target
    )
    stages: dict[str, dict[str, Any]] = {
        name: {
            **plan.specs[name].to_dict(),
            "precision": stage_precision(name, plan.precision),
            "variants": [],
        }
        for name in STAGES
    }
    resize = bicubic_as_matmul if caps.resize == "matmul" else nullcontext
    norms = group_norm_as_reductions if caps.norm == "reductions" else lambda _model: nullcontext()
    model.eval()
    clear_routing(model.layers())
    desc = f"export {plan.target_name} {plan.routing} {plan.precision}"
    for job in tqdm(plan.jobs, desc=desc, disable=not progress, unit="graph"):
        stage, spec = job["stage"], plan.specs[job["stage"]]
        name = f"{stage}{tgt.suffix}" if job["buckets"] is None else f"{stage}.v{job['variant']}{tgt.suffix}"
        fixed: Any = nullcontext()
        varying: list[torch.Tensor] = []
        if job["weights"] and caps.static_weights == "sliced":
            assert plan.buckets is not None
            fixed = sliced(stage_layers(model, stage), plan.buckets.centres[job["buckets"][0]])
        elif job["weights"]:
            layers = stage_layers(model, stage)
            fixed = folded(layers, job["weights"])
            varying = [layer.base.weight for layer in layers.values()]
        with fixed, resize(), norms(model):
            module: nn.Module = StageModule(model, stage, plan.routing, plan.form, varying)
            this_precision = stage_precision(stage, plan.precision)
            if this_precision in QUANTIZED and caps.quantizer == "shared":
                quantization.write(module, spec, stage, folder / name, job["buckets"])
            else:
                tgt.export_stage(module, spec, folder / name, this_precision)
        entry = stages[stage]
        entry["variants"].append({"file": name, "buckets": job["buckets"]})
        entry["variants"][-1].update(tgt.reports.get(name, {}))  # the target's checks and recipes
        if "bucket_variant" in job:
            entry["bucket_variant"] = job["bucket_variant"]
    if caps.multifunction:
        _combine_variants(cast(MultifunctionTarget, tgt), folder, stages)
    for stage, (_, report) in quantization.plans.items():
        stages[stage]["quantization"] = report
    return stages


def manifest_for(
    plan: ExportPlan, model: MoRSR, stages: dict[str, dict[str, Any]], folder: Path
) -> dict[str, Any]:
    """The manifest of an artifact whose stage files are in `folder` (hashes are added when
    it is written)."""
    c = model.config
    return {
        "schema_version": SCHEMA_VERSION,
        "created_by": {
            "mor_edge": mor_edge.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            **plan.target.describe(),
        },
        "model": {"name": c.name, "label": c.label, "hash": plan.fingerprint, "source": plan.model_source},
        "target": plan.target_name,
        "precision": plan.precision,
        "routing": {
            "mode": plan.routing,
            "dynamic_form": plan.form if plan.routing == "dynamic" else None,
            "buckets": plan.buckets.to_list()
            if plan.routing == "static" and plan.buckets is not None
            else None,
            "rule": "nearest centre, squared Euclidean distance in float64, ties to the lower index",
            "degradation_names": c.degradation_names,
        },
        "calibration": _calibration_summary(plan.calibration) if plan.precision in ("int8", "w8a8") else None,
        "scale": c.scale,
        "colour": {
            "fix": c.colour_fix,
            "levels": c.colour_levels,
            "denoise": c.denoise,
            "residual": c.residual,
            "where": "in the decoder stage's graph (input lr)" if c.decoder_takes_lr else None,
            "tile_margin": c.colour_margin,
        },
        "stages": stages,
        "sizes_bytes": {p.name: size_bytes(p) for p in sorted(folder.iterdir())},
    }


def _combine_variants(tgt: MultifunctionTarget, folder: Path, stages: dict[str, dict[str, Any]]) -> None:
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
