"""The OpenVINO target: IR (`.xml` + `.bin`) per stage variant, converted from the checked
ONNX graph of the ONNX target (one tracing path for every target).

Precisions: fp32; fp16 (weights stored in FP16, `compress_to_fp16`: the CPU plugin computes
in FP32, GPU and NPU in FP16); bf16 (the FP32 IR, run by the CPU plugin in bfloat16 where the
CPU has it natively: a runtime setting, recorded in the manifest; 2x the FP32 speed of the
built-in model's stages on an AVX512_BF16 CPU, README); int8 (`nncf.quantize`, default scheme, MIXED
preset, fast bias correction, an ignored scope of the float-only nodes and kept-float layer
groups); w8 (`nncf.compress_weights` INT8 asymmetric, weight-only, no
calibration data).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

# openvino itself comes through the runtime module, which imports it with telemetry off
from mor_edge.runtimes.openvino_runtime import model_signature, ov, telemetry_off
from mor_edge.stage_contract import StageSpec

from .capabilities import Capabilities, ExportSettings
from .int8 import Sample
from .onnx_export import OnnxTarget, activation_matmuls


def ignored_scope(float_nodes: set[str]) -> Any:
    """An NNCF ignored scope for ONNX node names: OpenVINO names the ops it makes from an
    ONNX node `<name>` `<name>` or `<name>/<suffix>` (e.g. `/conv/Conv/WithoutBiases`)."""
    import nncf

    if not float_nodes:
        return nncf.IgnoredScope()
    names = "|".join(re.escape(n) for n in sorted(float_nodes))
    return nncf.IgnoredScope(patterns=[f"^(?:{names})(?:/.*)?$"], validate=False)


class OpenVinoTarget:
    name = "openvino"
    suffix = ".xml"
    # Measured on the built-in model's tile (OpenVINO's per-node profile, then alternating runs):
    # bicubic as two matmuls, as for ONNX Runtime: the cubic Interpolate took 5.2 of an 18.9 ms
    # bf16 encoder; encoder 13.1 -> 10.4 ms, decoder 29.1 -> 26.6 ms (f32 24.7 -> 22.3, 60.6 ->
    # 59.2). GroupNorm as reductions: no layout reorder around each one; a tile's three stages
    # 58.0 -> 51.2 ms in bf16, 118.6 -> 87.7 ms in f32 (ONNX Runtime: no change, so not there).
    capabilities = Capabilities(
        precisions=("fp32", "fp16", "bf16", "int8", "w8"), resize="matmul", norm="reductions"
    )

    def __init__(self, exporter: str = "torchscript", **onnx_options: Any) -> None:
        self.onnx = OnnxTarget(exporter, **onnx_options)
        self.reports: dict[str, dict[str, Any]] = {}

    def configure(self, settings: ExportSettings) -> None:
        """Nothing to set: IRs are converted from the same ONNX graphs for every setting."""

    def describe(self) -> dict[str, object]:
        with telemetry_off():
            import nncf

        return {**self.onnx.describe(), "openvino": ov.__version__, "nncf": nncf.__version__}

    def export_stage(
        self, module: nn.Module, spec: StageSpec, path: Path, precision: str = "fp32"
    ) -> list[Path]:
        """Float IR: ONNX export (fp32), conversion, weights compressed to FP16 for fp16 (bf16
        keeps FP32 weights: the CPU plugin converts them when it compiles for bf16)."""
        scratch = path.parent / f".{path.stem}.ov-scratch"
        scratch.mkdir()
        try:
            source = scratch / "model.onnx"
            self.onnx.export_stage(module, spec, source, "fp32")
            with telemetry_off():
                model = ov.convert_model(str(source))
            ov.save_model(model, str(path), compress_to_fp16=precision == "fp16")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return self.finish(path, spec)

    def quantize_stage(self, source: Path, path: Path, samples: list[Sample], float_nodes: set[str]) -> None:
        """INT8 weights and activations with `nncf.quantize` over the calibration samples.
        Attention's activation-by-activation MatMuls stay in float, as for ONNX Runtime:
        quantized, they made the tiny UNet slower than FP32 (95 against 72 ms; 66 ms kept in
        float, measured with alternating runs)."""
        with telemetry_off():
            self._quantize(source, path, samples, float_nodes)

    def _quantize(self, source: Path, path: Path, samples: list[Sample], float_nodes: set[str]) -> None:
        import nncf

        from mor_edge.calib.feeders import nncf_dataset

        nncf.set_log_level(logging.ERROR)
        # Measured on the tiny stages (INT8 speed-up over FP32): `ModelType.TRANSFORMER` (more
        # ops left in float, SmoothQuant multiplies) 1.2-1.5x; the default scheme with symmetric
        # activations 2.1-2.8x, end to end 17.5 dB against the FP32 reference; with the MIXED
        # preset (asymmetric activations) 2.0-2.8x and 19.5 dB: shipped. Its progress bars are
        # silenced: they would bury the export's own.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quantized = nncf.quantize(
                ov.convert_model(str(source)),
                nncf_dataset(samples),
                subset_size=len(samples),
                preset=nncf.QuantizationPreset.MIXED,
                fast_bias_correction=True,
                ignored_scope=ignored_scope(float_nodes | activation_matmuls(source)),
            )
        ov.save_model(quantized, str(path), compress_to_fp16=False)

    def compress_weights(self, source: Path, path: Path, float_nodes: set[str]) -> None:
        """Weight-only INT8 (asymmetric, per channel); activations stay in float. Attention's
        products stay float too: OpenVINO folds a cross-attention's keys and values of the
        constant prompt into constants, NNCF took them for weights, and with one head the CPU
        plugin then refused to compile the UNet (ConvertFullyConnectedToFullyConnectedCompressed)."""
        with telemetry_off():
            import nncf

            nncf.set_log_level(logging.ERROR)
            compressed = nncf.compress_weights(
                ov.convert_model(str(source)),
                mode=nncf.CompressWeightsMode.INT8_ASYM,
                ignored_scope=ignored_scope(float_nodes | activation_matmuls(source)),
            )
        ov.save_model(compressed, str(path), compress_to_fp16=False)

    def runner(self, path: Path) -> Callable[[Sample], np.ndarray]:
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda inputs: np.asarray(compiled(inputs)[0])

    def finish(self, path: Path, spec: StageSpec) -> list[Path]:
        """Check the IR's inputs and outputs against the stage spec; returns its files."""
        spec.check_io(model_signature(ov.Core().read_model(str(path))), path.name)
        return [path, path.with_suffix(".bin")]
