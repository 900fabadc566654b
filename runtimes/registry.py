"""Which runtime runs which target, imported only when an artifact asks for it (the runtime
modules import `base`; nothing imports them back, so there is no circle)."""

from __future__ import annotations

import importlib
from pathlib import Path

from mor_edge.export.manifest import Artifact, ArtifactError

from .base import Runtime

# target -> (module, class, the extra that installs its runtime, the runtime's import name)
RUNTIMES: dict[str, tuple[str, str, str, str]] = {
    "onnx": ("ort_runtime", "OrtRuntime", "onnx", "onnxruntime"),
    "openvino": ("openvino_runtime", "OpenVinoRuntime", "openvino", "openvino"),
    "coreml": ("coreml_runtime", "CoreMLRuntime", "coreml", "coremltools"),
}


def load_runtime(folder: str | Path, threads: int | None = None) -> Runtime:
    """Verify the artifact and open it on the runtime its target needs."""
    artifact = Artifact(folder)
    if artifact.target not in RUNTIMES:
        raise ArtifactError(f"{folder}: no runtime for target {artifact.target!r} in this mor-edge")
    module, cls, extra, package = RUNTIMES[artifact.target]
    try:
        runtime_class = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    except ImportError:
        raise ArtifactError(
            f"{folder}: {artifact.target} artifacts need {package}, which is not installed "
            f"(pip install 'mor-edge[{extra}]')"
        ) from None
    runtime: Runtime = runtime_class(artifact, threads)
    return runtime
