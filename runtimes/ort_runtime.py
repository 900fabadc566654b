"""ONNX Runtime adapter (CPU by default; CUDA/TensorRT providers when available and asked for)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mor_edge.errors import UserError
from mor_edge.export.manifest import Artifact
from mor_edge.stage_contract import Signature

from .base import Runtime

_DTYPE_NAMES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def session_options(threads: int) -> ort.SessionOptions:
    """The settings every stage session runs with (benchmarks time other graphs with them)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Stages run back to back in separate sessions: spinning worker threads of the
    # previous session would steal the cores of the next one.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OrtRuntime(Runtime):
    name = "onnxruntime"

    def __init__(
        self, artifact: Artifact, threads: int | None = None, providers: tuple[str, ...] = ("cpu",)
    ) -> None:
        super().__init__(artifact, threads)
        unknown = [p for p in providers if p not in PROVIDERS]
        if unknown:
            raise UserError(f"unknown ONNX Runtime provider {unknown[0]!r} (known: {', '.join(PROVIDERS)})")
        missing = [p for p in providers if PROVIDERS[p] not in ort.get_available_providers()]
        if missing:
            raise UserError(
                f"this onnxruntime ({ort.__version__}) has no {missing[0]} provider (it has "
                f"{', '.join(ort.get_available_providers())}); on NVIDIA GPUs install onnxruntime-gpu"
            )
        self.providers = [PROVIDERS[p] for p in providers]
        self.used: list[str] = []  # what the sessions actually run on (ORT may fall back)

    def _load(self, path: Path, function: str | None) -> Any:
        session = ort.InferenceSession(str(path), session_options(self.threads), providers=self.providers)
        self.used = sorted(set(self.used) | set(session.get_providers()))
        return session

    def _run(self, session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(session.run(None, inputs))

    def signature(self, session: Any) -> tuple[Signature, Signature]:
        def read(values: Any) -> Signature:
            return [(t.name, tuple(t.shape), _DTYPE_NAMES.get(t.type, t.type)) for t in values]

        return read(session.get_inputs()), read(session.get_outputs())

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "version": ort.__version__,
            "providers": self.providers,
            "providers_used": self.used,
        }
