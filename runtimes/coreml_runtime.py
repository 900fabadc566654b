"""Core ML adapter: runs `.mlpackage` stages with coremltools' `predict` (macOS only).

Everywhere else constructing it raises `CoreMLUnavailable`, naming the step, so `parity`,
`bench` and `upscale` on a Core ML artifact fail with one clear line instead of a traceback.
Static artifacts hold one multifunction package per routed stage: a bucket's variant names
the function to load.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from mor_edge.errors import UserError
from mor_edge.export.manifest import Artifact
from mor_edge.stage_contract import Signature

from .base import Runtime

_DTYPE_NAMES = {65568: "float32", 65552: "float16"}  # ArrayFeatureType.FLOAT32 / FLOAT16


class CoreMLUnavailable(UserError):
    """A step that needs the Core ML runtime (macOS) was asked for elsewhere."""


def require_macos(step: str) -> None:
    if platform.system() != "Darwin":
        raise CoreMLUnavailable(
            f"{step} needs the Core ML runtime, which exists only on macOS; on {platform.system()} "
            "Core ML models can be converted and validated but not run"
        )


COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


class CoreMLRuntime(Runtime):
    name = "coreml"
    multifunction = True

    def __init__(self, artifact: Artifact, threads: int | None = None, compute_units: str = "ALL") -> None:
        require_macos("Core ML prediction (parity, bench, upscale with a Core ML artifact)")
        super().__init__(artifact, threads)
        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute_units must be one of {COMPUTE_UNITS}")
        self.compute_units = compute_units

    def _load(self, path: Path, function: str | None) -> Any:
        import coremltools as ct

        return ct.models.MLModel(
            str(path), compute_units=getattr(ct.ComputeUnit, self.compute_units), function_name=function
        )

    def signature(self, session: Any) -> tuple[Signature, Signature]:
        return package_signature(session)

    def _run(self, session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = session.predict(inputs)
        return [np.asarray(outputs[o.name], dtype=np.float32) for o in description(session).output]

    def describe(self) -> dict[str, Any]:
        import coremltools as ct

        return {**super().describe(), "version": ct.__version__, "compute_units": self.compute_units}


def description(model: Any) -> Any:
    """The inputs and outputs of the function a package was loaded with (a multifunction
    package's top-level description lists none)."""
    spec = model.get_spec().description
    if model.function_name is not None and len(spec.functions):
        return next(f for f in spec.functions if f.name == model.function_name)
    return spec


def package_signature(model: Any) -> tuple[Signature, Signature]:
    """A loaded package's (inputs, outputs) as (name, shape, dtype), for the stage contract."""
    desc = description(model)

    def read(features: Any) -> Signature:
        return [
            (
                f.name,
                tuple(int(d) for d in f.type.multiArrayType.shape),
                _DTYPE_NAMES.get(f.type.multiArrayType.dataType, "other"),
            )
            for f in features
        ]

    return read(desc.input), read(desc.output)
