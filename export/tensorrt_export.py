"""The TensorRT target: per-stage ONNX prepared for TensorRT's strongly typed networks, and the
recipe to build engines from it on the device.

Engines are specific to the GPU, the TensorRT version and CUDA, so an artifact holds ONNX and
the build recipe, and `mor-edge build-engines` builds on the device. The ONNX carries its
precision explicitly, which is what a strongly typed network (TensorRT 10 with
`STRONGLY_TYPED`; always in TensorRT 11) builds from, on JetPack 6 (TensorRT 10.3) and later:

- fp32: the float graph.
- fp16: ModelOpt AutoCast (`convert_to_mixed_precision`, FP16 with FP32 inputs and outputs;
  nodes whose values exceed FP16's safe range stay FP32).
- int8: explicit Q/DQ from ModelOpt (`modelopt.onnx.quantization.quantize`, calibrated on
  ONNX Runtime CPU with the project's calibration set), on the shared INT8 path of `int8.py`:
  the router, every node computed from `s` (the gate, TopK and the LoRA branch of dynamic
  graphs), the colour step and the kept-float layer groups are excluded; static buckets have
  their LoRA folded into the weights before Q/DQ (unfused LoRA breaks TensorRT's Q/DQ
  fusion). Non-quantized layers stay FP32.

Every stage file is an ONNX graph that ONNX Runtime runs too: parity on a machine without a
GPU checks exactly the graphs TensorRT will build.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from mor_edge.stage_contract import StageSpec

from .capabilities import Capabilities, ExportSettings
from .int8 import Sample
from .onnx_export import OnnxTarget, save_graph, signature

TRT_MIN_VERSION = "10.3"  # JetPack 6: the oldest TensorRT the recipe is written for
OPT_LEVEL = 3  # TensorRT's default builder optimization level
WORKSPACE_MB = 2048


def trtexec_command(file: str, workspace_mb: int = WORKSPACE_MB, opt_level: int = OPT_LEVEL) -> str:
    """The `trtexec` line that builds what `mor-edge build-engines` builds for `file`."""
    engine = Path(file).with_suffix(".engine").name
    return (
        f"trtexec --onnx={file} --saveEngine={engine} --stronglyTyped "
        f"--memPoolSize=workspace:{workspace_mb}M --builderOptimizationLevel={opt_level} "
        "--timingCacheFile=timing.cache"
    )


def _has_external_data(path: Path) -> bool:
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(i.data_location == onnx.TensorProto.EXTERNAL for i in graph.initializer)


def autocast_fp16(source: Path, path: Path) -> None:
    """FP16 with FP32 inputs and outputs by ModelOpt AutoCast (it keeps in FP32 the nodes whose
    values, measured on random inputs, leave FP16's safe range)."""
    from modelopt.onnx.autocast import convert_to_mixed_precision

    with _quiet():
        model = convert_to_mixed_precision(
            str(source), low_precision_type="fp16", keep_io_types=True, providers=["cpu"]
        )
    save_graph(model, path)


def _exclude_patterns(nodes: set[str]) -> list[str]:
    """ModelOpt takes node names as regular expressions: each name matched exactly."""
    return [f"^{re.escape(n)}$" for n in sorted(nodes)]


@contextlib.contextmanager
def _quiet() -> Any:
    """ModelOpt logs every pass at INFO and prints progress; the export shows its own bar."""
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.getLogger().setLevel(level)


@contextlib.contextmanager
def _ort_quantization_restored() -> Iterator[None]:
    """ModelOpt patches ONNX Runtime's calibrators and quantizer classes for its own use and
    never undoes it: an ONNX Runtime INT8 export later in the same process then failed
    ("Quantization parameters are not specified ..."). Their attributes are put back after."""
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer

    owners: list[Any] = [
        calibrate,
        calibrate.CalibraterBase,
        calibrate.MinMaxCalibrater,
        calibrate.HistogramCalibrater,
        calibrate.HistogramCollector,
        qdq_quantizer.QDQQuantizer,
        base_quantizer.BaseQuantizer,
    ]
    saved = [(owner, dict(vars(owner))) for owner in owners]
    try:
        yield
    finally:
        for owner, before in saved:
            for name in set(vars(owner)) - set(before):
                delattr(owner, name)
            for name, value in before.items():
                if vars(owner).get(name) is not value:
                    setattr(owner, name, value)


class TensorRTTarget:
    name = "tensorrt"
    suffix = ".onnx"
    capabilities = Capabilities(precisions=("fp32", "fp16", "int8"), default_precision="fp16")

    def __init__(self, exporter: str = "torchscript", calibration_method: str = "max") -> None:
        self.onnx = OnnxTarget(exporter)
        self.calibration_method = calibration_method
        self.reports: dict[str, dict[str, Any]] = {}

    def describe(self) -> dict[str, object]:
        import modelopt

        return {
            **self.onnx.describe(),
            "modelopt": modelopt.__version__,
            "int8_calibration_method": self.calibration_method,
            "tensorrt_network": "strongly typed",
            "tensorrt_min_version": TRT_MIN_VERSION,
        }

    def configure(self, settings: ExportSettings) -> None:
        """Nothing to set: every setting is carried by the graphs themselves."""

    def _recipe(self, path: Path, precision: str, how: str | None = None) -> None:
        self.reports[path.name] = {
            "tensorrt_build": {
                "network": "strongly typed",
                "precision_from": how
                or {"fp32": "graph", "fp16": "FP16 casts", "int8": "Q/DQ nodes"}[precision],
                "workspace_mb": WORKSPACE_MB,
                "builder_optimization_level": OPT_LEVEL,
                "trtexec": trtexec_command(path.name),
            }
        }

    def export_stage(
        self, module: nn.Module, spec: StageSpec, path: Path, precision: str = "fp16"
    ) -> list[Path]:
        """fp32: the float graph; fp16: the float graph through AutoCast."""
        if precision == "fp32":
            files = self.onnx.export_stage(module, spec, path, "fp32")
            self._recipe(path, precision)
            return files
        source = path.parent / f".{path.stem}.float.onnx"
        try:
            self.onnx.export_stage(module, spec, source, "fp32")
            if _has_external_data(source):
                # AutoCast runs the graph keeping every intermediate tensor: beyond 2 GiB of
                # weights (sd21's UNet) that exceeded 24 GB; the explicit-cast graph is the
                # module in half precision with casts at its inputs and outputs
                self.onnx.export_stage(module, spec, path, "fp16")
                self._recipe(path, precision, "FP16 weights, casts at inputs and outputs")
                return self.finish(path, spec)
            autocast_fp16(source, path)
        finally:
            source.unlink(missing_ok=True)
            source.with_name(source.name + ".data").unlink(missing_ok=True)
        self._recipe(path, precision)
        return self.finish(path, spec)

    def quantize_stage(self, source: Path, path: Path, samples: list[Sample], float_nodes: set[str]) -> None:
        """Explicit Q/DQ INT8 (symmetric, per-channel weights) by ModelOpt, calibrated on
        ONNX Runtime CPU; `float_nodes` stay FP32."""
        from modelopt.onnx.quantization import quantize

        stacked = {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}
        large = _has_external_data(source)
        with _quiet(), _ort_quantization_restored():
            quantize(
                str(source),
                quantize_mode="int8",
                calibration_data=stacked,  # ModelOpt splits it into samples of the graph's batch
                calibration_method=self.calibration_method,
                calibration_eps=["cpu"],
                nodes_to_exclude=_exclude_patterns(float_nodes),
                op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                high_precision_dtype="fp32",
                use_external_data_format=large,
                calibrate_per_node=large,  # node by node: a model beyond 2 GiB (sd21) fits in memory
                output_path=str(path),
            )
        self._recipe(path, "int8")

    def runner(self, path: Path) -> Callable[[Sample], np.ndarray]:
        return self.onnx.runner(path)

    def finish(self, path: Path, spec: StageSpec) -> list[Path]:
        """Check a prepared graph: valid ONNX, FP32 inputs and outputs as the contract says."""
        onnx.checker.check_model(str(path))
        spec.check_io(signature(path), path.name)
        return [path]
