"""Which runtime runs which target, imported only when an artifact asks for it (the runtime
modules import `base`; nothing imports them back, so there is no circle).

Each target has a default runtime; a tensorrt artifact's stage files are ONNX graphs, so
ONNX Runtime runs them too (`--runtime onnxruntime`): that is how they are checked on a
machine without a GPU.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from mor_edge.export.manifest import Artifact, ArtifactError

from .base import Runtime

# runtime -> (module, class, the extra that installs it, the package it imports)
RUNTIMES: dict[str, tuple[str, str, str, str]] = {
    "onnxruntime": ("ort_runtime", "OrtRuntime", "onnx", "onnxruntime"),
    "openvino": ("openvino_runtime", "OpenVinoRuntime", "openvino", "openvino"),
    "coreml": ("coreml_runtime", "CoreMLRuntime", "coreml", "coremltools"),
    "tensorrt": ("tensorrt_runtime", "TensorRTRuntime", "tensorrt", "tensorrt"),
}
# target -> the runtimes that can run its files, the default first
TARGET_RUNTIMES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime",),
    "openvino": ("openvino",),
    "coreml": ("coreml",),
    "tensorrt": ("tensorrt", "onnxruntime"),
}


def load_runtime(
    folder: str | Path, threads: int | None = None, runtime: str | None = None, **options: Any
) -> Runtime:
    """Verify the artifact and open it on `runtime` (default: its target's own); `options` go
    to the runtime (ONNX Runtime: `providers`)."""
    artifact = Artifact(folder)
    allowed = TARGET_RUNTIMES.get(artifact.target, ())
    if not allowed:
        raise ArtifactError(f"{folder}: no runtime for target {artifact.target!r} in this mor-edge")
    name = runtime or allowed[0]
    if name not in allowed:
        raise ArtifactError(
            f"{folder}: {artifact.target} artifacts run on {' or '.join(allowed)}, not {name}"
        )
    module, cls, extra, package = RUNTIMES[name]
    try:
        runtime_class = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    except ImportError:
        raise ArtifactError(
            f"{folder}: {name} is not installed (pip install 'mor-edge[{extra}]' for {package})"
        ) from None
    loaded: Runtime = runtime_class(artifact, threads, **options)
    return loaded
