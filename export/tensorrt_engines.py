"""`mor-edge build-engines`: TensorRT engines from a tensorrt artifact, on the device.

Every stage file becomes a strongly typed network (the precision comes from the graph: FP16
casts, Q/DQ), built with one timing cache shared by every stage and bucket (reused across
runs when `--timing-cache` names a file), and written under `engines/KEY/` with a build
record: the key, the options, and per engine its layers' precisions and (with DLA) which
layers fell back to the GPU. Written to NVIDIA's documented Python API (TensorRT 10.3+); not
run here: no machine of this project has TensorRT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mor_edge.atomic import atomic_folder
from mor_edge.runtimes.tensorrt_runtime import (
    BUILD_RECORD,
    ENGINES,
    require_tensorrt,
    this_device_key,
)

from .manifest import Artifact, ArtifactError


def _layer_report(engine: Any, trt: Any) -> dict[str, Any]:
    """Per layer: its precision and device, from the engine inspector (DETAILED verbosity)."""
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", [])
    precisions: dict[str, int] = {}
    on_gpu_from_dla = []
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        for out in layer.get("Outputs", []):
            fmt = str(out.get("Format/Datatype", "?"))
            precisions[fmt] = precisions.get(fmt, 0) + 1
        if layer.get("Device") == "GPU" and layer.get("DLA requested"):
            on_gpu_from_dla.append(layer.get("Name"))
    return {"layers": len(layers), "output_formats": precisions, "dla_fallback_to_gpu": on_gpu_from_dla}


def build_engines(
    folder: str | Path,
    workspace_mb: int = 2048,
    opt_level: int = 3,
    dla_core: int | None = None,
    timing_cache: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Build every stage file of a tensorrt artifact for this device; returns the engine folder."""
    artifact = Artifact(folder)
    if artifact.target != "tensorrt":
        raise ArtifactError(f"{folder}: a {artifact.target} artifact; engines are built from tensorrt ones")
    require_tensorrt("build-engines")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    key = this_device_key()
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    files = sorted({v.file for e in artifact.checked.stages.values() for v in e.variants})
    record: dict[str, Any] = {
        "key": key,
        "tensorrt": str(trt.__version__),
        "workspace_mb": workspace_mb,
        "builder_optimization_level": opt_level,
        "dla_core": dla_core,
        "engines": {},
    }
    out = Path(folder) / ENGINES / key
    (Path(folder) / ENGINES).mkdir(exist_ok=True)
    with atomic_folder(out, force=True, kind="engines") as tmp:
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        config.builder_optimization_level = opt_level
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
        if dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = dla_core
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        for name in tqdm(files, desc="build-engines", unit="engine", disable=not progress):
            network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(Path(folder) / name)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise ArtifactError(f"{name}: TensorRT's ONNX parser refused it ({errors[:300]})")
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise ArtifactError(f"{name}: TensorRT could not build an engine (see its log above)")
            engine_name = Path(name).with_suffix(".engine").name
            (tmp / engine_name).write_bytes(bytes(serialized))
            engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
            record["engines"][engine_name] = _layer_report(engine, trt)
        (tmp / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if cache_path:
            cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out
