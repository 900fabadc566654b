"""ONNX Runtime adapter (CPU by default; CUDA/TensorRT providers when available and asked for)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mor_edge.export.manifest import Artifact
from mor_edge.stage_contract import Signature

from .base import Runtime

_DTYPE_NAMES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


class OrtRuntime(Runtime):
    name = "onnxruntime"

    def __init__(
        self, artifact: Artifact, threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        super().__init__(artifact, threads)
        self.providers = providers or ["CPUExecutionProvider"]

    def _load(self, path: Path, function: str | None) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Stages run back to back in separate sessions: spinning worker threads of the
        # previous session would steal the cores of the next one.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), options, providers=self.providers)

    def _run(self, session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(session.run(None, inputs))

    def signature(self, session: Any) -> tuple[Signature, Signature]:
        def read(values: Any) -> Signature:
            return [(t.name, tuple(t.shape), _DTYPE_NAMES.get(t.type, t.type)) for t in values]

        return read(session.get_inputs()), read(session.get_outputs())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "version": ort.__version__, "providers": self.providers}
