"""One `export()` for every target: stages x routing variants -> files + manifest, atomically.

The artifact is built in a temporary sibling folder and renamed into place only when every
file has been written and checked, so a failed export never leaves a half-written artifact
and a refused overwrite leaves the old one untouched.
"""

from __future__ import annotations

import copy
import os
import platform
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

import mor_edge
from mor_edge.errors import UserError
from mor_edge.model import MoRSR
from mor_edge.routing import Buckets, clear_routing

from .manifest import SCHEMA_VERSION, model_fingerprint, write_manifest
from .routing_plan import default_buckets, folded, stage_layers, static_plan
from .stages import ROUTED_STAGES, ROUTING_MODES, STAGES, StageModule, StageSpec, stage_specs

PRECISIONS = ("fp32", "fp16")


class Target(Protocol):
    name: str
    suffix: str

    def describe(self) -> dict[str, object]: ...

    def export_stage(self, module: nn.Module, spec: StageSpec, path: Path) -> list[Path]: ...


def make_target(name: str, **options: Any) -> Target:
    if name == "onnx":
        from .onnx_export import OnnxTarget

        return OnnxTarget(**options)
    raise UserError(f"unknown target {name!r} (available: onnx)")


class HalfPrecision(nn.Module):
    """Runs a float16 copy of a stage behind float32 inputs and outputs, so every precision
    has the same interface and the host never handles half floats."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(module).half()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.inner(*(x.half() for x in inputs)).float()


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


def export(
    model: MoRSR,
    out: str | Path,
    target: str = "onnx",
    routing: str = "static",
    precision: str = "fp32",
    buckets: Buckets | None = None,
    force: bool = False,
    model_source: str = "builtin",
    target_options: dict[str, Any] | None = None,
    dynamic_form: str = "fold",
    progress: bool = True,
) -> Path:
    """Export every stage of `model` to `out` for `target`; returns the artifact folder."""
    if routing not in ROUTING_MODES:
        raise UserError(f"routing must be one of {', '.join(ROUTING_MODES)}")
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)} for this target")
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: folder does not exist")
    tgt = make_target(target, **(target_options or {}))
    if routing == "static" and buckets is None:
        buckets = default_buckets(model)
    specs = stage_specs(model, routing)
    jobs = _job_list(model, routing, buckets)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        stages: dict[str, dict[str, Any]] = {
            name: {**specs[name].to_dict(), "variants": []} for name in STAGES
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
            fold = folded(stage_layers(model, stage), job["weights"]) if job["weights"] else nullcontext()
            with fold:
                module: nn.Module = StageModule(model, stage, routing, dynamic_form)
                tgt.export_stage(HalfPrecision(module) if precision == "fp16" else module, spec, tmp / name)
            entry = stages[stage]
            entry["variants"].append({"file": name, "buckets": job["buckets"]})
            if "bucket_variant" in job:
                entry["bucket_variant"] = job["bucket_variant"]
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
                "hash": model_fingerprint(model),
                "source": model_source,
            },
            "target": target,
            "precision": precision,
            "routing": {
                "mode": routing,
                "dynamic_form": dynamic_form if routing == "dynamic" else None,
                "buckets": buckets.to_list() if routing == "static" and buckets is not None else None,
                "rule": "nearest centre, squared Euclidean distance in float64, ties to the lower index",
                "degradation_names": model.config.degradation_names,
            },
            "scale": model.config.scale,
            "stages": stages,
        }
        write_manifest(tmp, manifest)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished artifact into place; an old one is removed only after that succeeds."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        os.replace(tmp, out)
