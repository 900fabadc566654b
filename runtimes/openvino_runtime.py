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
from mor_edge.stage_contract import Signature

from .base import Runtime

_DTYPE_NAMES = {"f32": "float32", "f16": "float16", "i64": "int64"}


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

    def signature(self, session: Any) -> tuple[Signature, Signature]:
        return model_signature(session)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "version": ov.__version__, "device": self.device, "streams": 1}


def model_signature(model: Any) -> tuple[Signature, Signature]:
    """A read or compiled model's (inputs, outputs) as (name, shape, dtype), for the stage
    contract's check (the runtime reads its compiled models the same way). A dynamic
    dimension reads -1, which no contract has."""

    def name(port: Any) -> str:
        """A port can carry several tensor names (the graph's `s` and an inner `/Cast_output_0`):
        the graph's own name is the one without the exporter's `/` path."""
        plain = sorted(n for n in port.get_names() if not n.startswith("/"))
        return plain[0] if plain else str(port.get_any_name())

    def read(ports: Any) -> Signature:
        return [
            (
                name(p),
                tuple(d.get_length() if d.is_static else -1 for d in p.get_partial_shape()),
                _DTYPE_NAMES.get(p.get_element_type().get_type_name(), "other"),
            )
            for p in ports
        ]

    return read(model.inputs), read(model.outputs)
