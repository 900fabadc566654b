"""Core ML adapter: runs `.mlpackage` stages with coremltools' `predict` (macOS only).

Everywhere else constructing it raises `CoreMLUnavailable`, naming the step, so `parity`,
`bench` and `upscale` on a Core ML artifact fail with one clear line instead of a traceback.
Static artifacts hold one multifunction package per routed stage: a bucket's variant names
the function to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mor_edge.export.coreml_export import require_macos
from mor_edge.export.manifest import Artifact

from .base import Runtime

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


class CoreMLRuntime(Runtime):
    name = "coreml"

    def __init__(self, artifact: Artifact, threads: int | None = None, compute_units: str = "ALL") -> None:
        require_macos("Core ML prediction (parity, bench, upscale with a Core ML artifact)")
        super().__init__(artifact, threads)
        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute_units must be one of {COMPUTE_UNITS}")
        self.compute_units = compute_units

    def session(self, stage: str, bucket: int | None = None) -> Any:
        entry = self.artifact.stage(stage)
        index = entry["bucket_variant"][bucket] if bucket is not None and "bucket_variant" in entry else 0
        variant = entry["variants"][index]
        key = (variant["file"], variant.get("function"))
        if key not in self._sessions:
            self._sessions[key] = self._open(self.artifact.folder / variant["file"], variant.get("function"))
        return self._sessions[key]

    def _open(self, path: Path, function: str | None) -> Any:
        import coremltools as ct

        units = getattr(ct.ComputeUnit, self.compute_units)
        if function is None:
            return ct.models.MLModel(str(path), compute_units=units)
        return ct.models.MLModel(str(path), compute_units=units, function_name=function)

    def _load(self, path: Path) -> Any:
        return self._open(path, None)

    def _run(self, session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = session.predict(inputs)
        names = [o.name for o in session.get_spec().description.output]
        return [np.asarray(outputs[name], dtype=np.float32) for name in names]

    def describe(self) -> dict[str, Any]:
        import coremltools as ct

        return {**super().describe(), "version": ct.__version__, "compute_units": self.compute_units}
