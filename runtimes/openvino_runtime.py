"""OpenVINO adapter (CPU): one compiled model per stage file, latency-oriented settings.

Threads are `INFERENCE_NUM_THREADS`, one stream (single-image latency), inference precision
f32 for every IR (the CPU plugin would otherwise pick bf16 on CPUs that have it, which
parity would see as error), and a model cache so a second run skips compilation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from mor_edge.export.manifest import Artifact

from .base import Runtime


def default_cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "mor-edge" / "openvino"


class OpenVinoRuntime(Runtime):
    name = "openvino"

    def __init__(
        self,
        artifact: Artifact,
        threads: int | None = None,
        device: str = "CPU",
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(artifact, threads)
        self.device = device
        self.core = ov.Core()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.core.set_property({"CACHE_DIR": str(self.cache_dir)})
        self.config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }

    def _load(self, path: Path, function: str | None) -> Any:
        return self.core.compile_model(str(path), self.device, self.config)

    def _run(self, session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = session(inputs)
        return [np.asarray(result[port]) for port in session.outputs]

    def io_shapes(self, session: Any) -> dict[str, tuple[int, ...]]:
        ports = (*session.inputs, *session.outputs)
        return {
            port.get_any_name(): tuple(int(d) for d in port.get_partial_shape().to_shape()) for port in ports
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "version": ov.__version__, "device": self.device, "streams": 1}
