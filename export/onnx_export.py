"""The ONNX target: one .onnx file per stage variant, checked and shape-inferred.

INT8 is static QDQ quantization with ONNX Runtime's quantizer: per-channel symmetric int8
weights, asymmetric uint8 activations (this CPU has VNNI, so no reduced range), ranges from
the calibration set by `CALIBRATION_METHOD` (chosen by measurement: see the README).

Pinned: the TorchScript-based `torch.onnx` exporter (`dynamo=False`) at opset 18. Both
exporters produce matching graphs for these stages (max-abs within 3e-5 on the tiny model);
the TorchScript one is 3-7x faster to export. `--exporter dynamo` selects the other one.
"""

from __future__ import annotations

import copy
import logging
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from mor_edge.stage_contract import Signature, StageSpec

from .capabilities import Capabilities, ExportSettings
from .int8 import QUANTIZED_OPS, Sample
from .stages import example_inputs
from .weight_templates import WeightTemplates

OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's limit is 2 GiB; leave room for the graph

_DTYPE_NAMES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
CALIBRATION_METHOD = "minmax"  # see the README: percentile is more accurate but 9x slower


class HalfPrecision(nn.Module):
    """Runs a float16 copy of a stage behind float32 inputs and outputs, so every precision
    has the same interface and the host never handles half floats."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(module).half()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.inner(*(x.half() for x in inputs)).float()


class OnnxTarget:
    name = "onnx"
    suffix = ".onnx"
    # bicubic as two matmuls: ONNX Runtime's cubic Resize took 16 ms of a 46 ms encoder tile
    # (benchmarks/ort_int8_profile.py)
    capabilities = Capabilities(precisions=("fp32", "fp16", "int8"), resize="matmul")

    def __init__(self, exporter: str = "torchscript", calibration_method: str = CALIBRATION_METHOD) -> None:
        if exporter not in EXPORTERS:
            raise ValueError(f"exporter must be one of {EXPORTERS}")
        if calibration_method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}")
        self.exporter = exporter
        self.calibration_method = calibration_method
        self.reports: dict[str, dict[str, Any]] = {}
        self.templates = WeightTemplates()  # one export's static buckets share a trace
        self._range_caches: dict[Path, Path] = {}

    def describe(self) -> dict[str, object]:
        return {
            "exporter": f"torch.onnx ({self.exporter})",
            "opset": OPSET,
            "onnx": onnx.__version__,
            "int8_calibration_method": self.calibration_method,
        }

    def configure(self, settings: ExportSettings) -> None:
        """Nothing to set: an ONNX graph takes the same form for every export setting."""

    def export_stage(
        self, module: nn.Module, spec: StageSpec, path: Path, precision: str = "fp32"
    ) -> list[Path]:
        """Export (fp32 or fp16), consolidate weights (external data only when needed), check,
        infer shapes, and check the graph's inputs and outputs against the stage spec.
        A static bucket's graph after its stage's first is that graph with the bucket's
        weights written in, where `weight_templates` could check that this is what tracing
        gives. Returns the files written."""
        varying = getattr(module, "varying", ())
        if precision == "fp16":
            module, varying = HalfPrecision(module), ()
        # the weights' identities too: a template writes in these tensors, no other model's
        key = (getattr(module, "stage", None), spec, precision, tuple(map(id, varying)))
        proto = self.templates.graph(key, varying, lambda: self._trace(module, spec, path))
        files = save_graph(proto, path)
        del proto
        onnx.checker.check_model(str(path))
        onnx.shape_inference.infer_shapes_path(str(path), strict_mode=True)
        spec.check_io(signature(path), path.name)
        return files

    def _trace(self, module: nn.Module, spec: StageSpec, path: Path) -> onnx.ModelProto:
        scratch = path.parent / f".{path.stem}.scratch"
        scratch.mkdir()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # Tracer warnings about shape asserts in diffusers/transformers are expected
                # for fixed-shape export; the graph is validated below instead.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    example_inputs(spec),
                    str(scratch / "model.onnx"),
                    input_names=[t.name for t in spec.inputs],
                    output_names=[t.name for t in spec.outputs],
                    opset_version=OPSET,
                    dynamo=self.exporter == "dynamo",
                    do_constant_folding=True,
                )
            proto = onnx.load(str(scratch / "model.onnx"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        _declare_output_shapes(proto, spec)
        read_initializers_directly(proto.graph)
        return proto

    def quantize_stage(self, source: Path, path: Path, samples: list[Sample], float_nodes: set[str]) -> None:
        """Static QDQ INT8 of a float graph; activation ranges are computed once per source
        graph and reused (sensitivity passes quantize the same graph many times)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        from mor_edge.calib.feeders import ort_reader

        cache = self._range_caches.setdefault(source, source.with_suffix(".ranges.json"))
        method = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[self.calibration_method]
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs advice at WARNING
        try:
            quantize_static(
                str(source),
                str(path),
                ort_reader(samples),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(float_nodes | activation_matmuls(source)),
                calibrate_method=method,
                calibration_cache_path=cache,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        finally:
            logging.getLogger().setLevel(quiet)

    def runner(self, path: Path) -> Callable[[Sample], np.ndarray]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda inputs: session.run(None, inputs)[0]

    def finish(self, path: Path, spec: StageSpec) -> list[Path]:
        """Check a graph written by `quantize_stage`; returns its files."""
        onnx.checker.check_model(str(path))
        spec.check_io(signature(path), path.name)
        return [path]


def activation_matmuls(path: Path) -> set[str]:
    """MatMuls of two activations (attention's scores and its weighted sum). Left in float for
    ONNX Runtime: quantized, they fuse into QLinearSoftmax and QLinearMatMul kernels that made
    the tiny UNet 0.5x its FP32 speed (benchmarks/ort_int8_profile.py)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    constants.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return {n.name for n in graph.node if n.op_type == "MatMul" and not constants & set(n.input)}


def save_graph(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """One file, or the weights beside it (`NAME.data`) where protobuf's 2 GiB limit needs;
    returns the files written."""
    external = sum(len(t.raw_data) for t in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    data = path.parent / f"{path.name}.data"
    onnx.save_model(
        proto, str(path), save_as_external_data=external, all_tensors_to_one_file=True, location=data.name
    )
    return [path, data] if external else [path]


def _declare_output_shapes(proto: onnx.ModelProto, spec: StageSpec) -> None:
    """Write the spec's fixed output shapes into the graph where the exporter left them
    symbolic; strict shape inference then fails if the graph disagrees."""
    for value, tensor in zip(proto.graph.output, spec.outputs, strict=True):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(tensor.shape) or any(not d.dim_value for d in dims):
            del dims[:]
            for size in tensor.shape:
                dims.add().dim_value = size


def read_initializers_directly(graph: onnx.GraphProto) -> None:
    """Remove the Identity nodes that only rename an initializer, their readers reading it.

    The TorchScript exporter keeps one initializer for equal constants and an Identity for each
    further use of it. With GroupNorm as reductions and equal GroupNorm weights (any untrained
    model, the random ones of the benchmarks and tests among them), ONNX Runtime 1.32's graph
    optimizer then turned valid graphs into ones it refused to load ("Node input ... is not a
    graph input, initializer, or output of a previous node"), which stopped INT8 exports for
    OpenVINO."""
    initializers = {t.name for t in graph.initializer}
    outputs = {v.name for v in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        source = alias.get(node.input[0], node.input[0]) if node.op_type == "Identity" else ""
        if source in initializers and node.output[0] not in outputs:
            alias[node.output[0]] = source
        else:
            kept.append(node)
    if alias:
        for node in kept:
            for i, name in enumerate(node.input):
                node.input[i] = alias.get(name, name)
        info = [v for v in graph.value_info if v.name not in alias]
        del graph.node[:], graph.value_info[:]
        graph.node.extend(kept)
        graph.value_info.extend(info)


def signature(path: Path) -> tuple[Signature, Signature]:
    """A graph's (inputs, outputs) as (name, shape, dtype), for the stage contract's check."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def read(values: Any) -> Signature:
        return [
            (
                v.name,
                tuple(d.dim_value for d in v.type.tensor_type.shape.dim),
                _DTYPE_NAMES.get(v.type.tensor_type.elem_type, "other"),
            )
            for v in values
        ]

    return read(graph.input), read(graph.output)
