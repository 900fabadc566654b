"""OpenVINO adapter (CPU): one compiled model per stage file, latency-oriented settings.

Threads are `INFERENCE_NUM_THREADS`, one stream (single-image latency) and a model cache so
a second run skips compilation. Inference precision follows the artifact: f32 for FP32 and
FP16 IRs (the CPU plugin would otherwise pick bf16 on CPUs that have it, which parity would
see as error); bfloat16 for a `bf16` artifact's image stages and for the float parts of an
`int8` or `w8` one (already lossy, their gates measure it), where the CPU computes it
natively (AVX512_BF16 or AMX), f32 elsewhere. The router always runs in f32: its scores pick
the experts.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mor_edge.export.manifest import Artifact
from mor_edge.stage_contract import Signature

from .base import Runtime

__all__ = [
    "OpenVinoRuntime",
    "blob_cache_limit",
    "compile_config",
    "cpu_has_bf16",
    "default_cache_dir",
    "model_signature",
    "ov",
    "telemetry_off",
    "trim_blob_cache",
]


@contextlib.contextmanager
def telemetry_off() -> Iterator[None]:
    """OpenVINO (at import and in its converter) and NNCF send usage data to Google Analytics
    from a child process, except in CI (they pass `disable_in_ci`, which reads CI=true):
    mor-edge uses no network, and offline that child printed a traceback in the middle of an
    export. CI=true while the block runs, restored after; the decision holds for the process."""
    saved = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = saved


with telemetry_off():
    import openvino as ov

_DTYPE_NAMES = {"f32": "float32", "f16": "float16", "i64": "int64"}


# OpenVINO writes a compiled blob per stage file it compiles (one per bucket and stage,
# 0.5-4.6 MB each for the built-in model, GBs for sd21) and never removes one.
BLOB_CACHE_ENV = "MOR_EDGE_OPENVINO_CACHE_GIB"
BLOB_CACHE_GIB = 4.0
BLOB_KEEP_SECONDS = 3600


def default_cache_dir() -> Path:
    """`openvino/` in mor-edge's cache folder (`$MOR_EDGE_CACHE`, else the XDG one), so that
    a cache moved elsewhere takes OpenVINO's blobs with it."""
    from mor_edge.engine_cache import cache_root

    return cache_root() / "openvino"


def blob_cache_limit() -> int:
    """Bytes the blob cache may hold: `$MOR_EDGE_OPENVINO_CACHE_GIB` GiB, else 4 (an `sd21`
    artifact with several buckets may want more: its FP32 UNet blob alone is 3.1 GiB)."""
    try:
        gib = float(os.environ.get(BLOB_CACHE_ENV, BLOB_CACHE_GIB))
    except ValueError:
        gib = BLOB_CACHE_GIB
    return int(max(gib, 0.0) * (1 << 30))


def trim_blob_cache(folder: Path, limit: int | None = None) -> list[Path]:
    """Remove the oldest compiled blobs while the folder holds more than `limit` bytes
    (default `blob_cache_limit()`), so that it stops growing with every export; a removed blob
    only costs a recompile. Blobs written in the last hour stay (one sd21 UNet alone can be
    over the limit)."""
    limit = blob_cache_limit() if limit is None else limit
    blobs = []
    for blob in folder.glob("*.blob"):
        with contextlib.suppress(OSError):
            stat = blob.stat()
            blobs.append((stat.st_mtime, stat.st_size, blob))
    total = sum(size for _, size, _ in blobs)
    removed = []
    recent = time.time() - BLOB_KEEP_SECONDS
    for mtime, size, blob in sorted(blobs):
        if total <= limit or mtime > recent:
            break
        with contextlib.suppress(OSError):
            blob.unlink()
            total -= size
            removed.append(blob)
    return removed


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
        trim_blob_cache(self.cache_dir)
        self.core.set_property({"CACHE_DIR": str(self.cache_dir)})
        self.router_file = artifact.stage_file("router")[0]
        wants_bf16 = artifact.precision in BF16_PRECISIONS
        self.image_precision = "bf16" if wants_bf16 and cpu_has_bf16(self.core, device) else "f32"
        self.precision_note = " (no bf16 on this CPU)" if wants_bf16 and self.image_precision == "f32" else ""

    def _load(self, path: Path, function: str | None) -> Any:
        precision = "f32" if path == self.router_file else self.image_precision
        return self.core.compile_model(str(path), self.device, compile_config(self.threads, precision))

    def _run(self, session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = session(inputs)
        return [np.asarray(result[port]) for port in session.outputs]

    def signature(self, session: Any) -> tuple[Signature, Signature]:
        return model_signature(session)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "version": ov.__version__,
            "device": self.device,
            "streams": 1,
            "inference_precision": self.image_precision + self.precision_note,
        }


BF16_PRECISIONS = ("bf16", "int8", "w8")  # artifacts whose float work may run in bfloat16


def compile_config(threads: int, precision: str) -> dict[str, Any]:
    """The settings every stage is compiled with (benchmarks time other graphs with them)."""
    return {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision,
    }


def cpu_has_bf16(core: ov.Core | None = None, device: str = "CPU") -> bool:
    """Whether `device` computes bfloat16 natively (OpenVINO's own reading of the CPU)."""
    return "BF16" in (core or ov.Core()).get_property(device, "OPTIMIZATION_CAPABILITIES")


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
