"""TensorRT: engines built on the device from a tensorrt artifact's ONNX, and the runtime that
runs them.

Engines are specific to the GPU, the TensorRT version and CUDA, so they live beside the
artifact under `engines/KEY/`, KEY naming the GPU, its compute capability and the TensorRT
version (`device_key`); a runtime refuses engines built under another key. Engines run from
Python without pycuda: inputs and outputs are PyTorch CUDA tensors whose addresses are bound
with `set_tensor_address`, run with `execute_async_v3` on a CUDA stream.

Nothing here can run on a machine without TensorRT and a CUDA GPU: `require_tensorrt` says
which is missing, in one line, before any work.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from mor_edge.errors import UserError
from mor_edge.export.manifest import Artifact, ArtifactError
from mor_edge.stage_contract import Signature

from .base import Runtime

ENGINES = "engines"
BUILD_RECORD = "build.json"
_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16"}


class TensorRTUnavailable(UserError):
    """TensorRT or a CUDA GPU is missing for a step that needs them."""


def require_tensorrt(step: str) -> None:
    """Refuse `step` before any work where TensorRT or a CUDA GPU (through PyTorch) is missing."""
    if importlib.util.find_spec("tensorrt") is None:
        raise TensorRTUnavailable(
            f"{step} needs TensorRT (the `tensorrt` Python package: JetPack on Jetson, NVIDIA's "
            "index elsewhere), which is not installed; run the artifact's ONNX with --runtime "
            "onnxruntime instead"
        )
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            f"{step} needs a CUDA GPU and a CUDA build of PyTorch; this PyTorch ({torch.__version__}) "
            "sees none"
        )


def device_key(gpu_name: str, capability: tuple[int, int], trt_version: str) -> str:
    """The key engines are stored and looked up under: GPU, compute capability, TensorRT."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return f"{name}-sm{capability[0]}{capability[1]}-trt{trt_version}"


def this_device_key() -> str:
    import tensorrt as trt
    import torch

    return device_key(torch.cuda.get_device_name(), torch.cuda.get_device_capability(), str(trt.__version__))


def check_engine_key(record: dict[str, Any], key: str, folder: Path) -> None:
    """Refuse engines whose build record names another device or TensorRT version."""
    if record.get("key") != key:
        raise ArtifactError(
            f"{folder}: engines built for {record.get('key')!r}, this device is {key!r}; "
            "run `mor-edge build-engines` on this device"
        )


def engine_folder(artifact: Path, key: str) -> Path:
    return artifact / ENGINES / key


class TensorRTRuntime(Runtime):
    name = "tensorrt"

    def __init__(self, artifact: Artifact, threads: int | None = None) -> None:
        require_tensorrt("running TensorRT engines")
        import tensorrt as trt
        import torch

        super().__init__(artifact, threads)
        self.key = this_device_key()
        self.engines = engine_folder(artifact.folder, self.key)
        record = self.engines / BUILD_RECORD
        if not record.is_file() or record.is_symlink():
            raise ArtifactError(
                f"{artifact.folder}: no engines for this device ({self.key}); "
                "run `mor-edge build-engines` on it first"
            )
        check_engine_key(json.loads(record.read_text()), self.key, artifact.folder)
        self._trt = trt
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def _load(self, path: Path, function: str | None) -> Any:
        engine_path = self.engines / path.with_suffix(".engine").name
        if not engine_path.is_file() or engine_path.is_symlink():
            raise ArtifactError(f"{engine_path}: engine missing; run `mor-edge build-engines` again")
        engine = self._trt.Runtime(self._logger).deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise ArtifactError(f"{engine_path}: TensorRT could not deserialize the engine")
        return engine, engine.create_execution_context()

    def signature(self, session: Any) -> tuple[Signature, Signature]:
        engine, _ = session
        trt = self._trt
        tensors: dict[bool, Signature] = {True: [], False: []}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = _DTYPE_NAMES.get(engine.get_tensor_dtype(name).name, "other")
            tensors[is_input].append((name, tuple(engine.get_tensor_shape(name)), dtype))
        return tensors[True], tensors[False]

    def _run(self, session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        engine, context = session
        torch = self._torch
        outputs = []
        bound = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == self._trt.TensorIOMode.INPUT:
                tensor = torch.from_numpy(np.ascontiguousarray(inputs[name])).cuda()
            else:
                tensor = torch.empty(tuple(engine.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
                outputs.append(tensor)
            bound.append(tensor)
            context.set_tensor_address(name, tensor.data_ptr())
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self._stream.synchronize()
        return [t.cpu().numpy() for t in outputs]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "version": str(self._trt.__version__),
            "device": self._torch.cuda.get_device_name(),
            "engine_key": self.key,
        }
