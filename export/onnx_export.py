"""The ONNX target: one .onnx file per stage variant, checked and shape-inferred.

Pinned: the TorchScript-based `torch.onnx` exporter (`dynamo=False`) at opset 18. Both
exporters produce matching graphs for these stages (max-abs within 3e-5 on the tiny model);
the TorchScript one is 3-7x faster to export. `--exporter dynamo` selects the other one.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from .stages import StageSpec

OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's limit is 2 GiB; leave room for the graph

_ONNX_DTYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}


class OnnxTarget:
    name = "onnx"
    suffix = ".onnx"

    def __init__(self, exporter: str = "torchscript") -> None:
        if exporter not in EXPORTERS:
            raise ValueError(f"exporter must be one of {EXPORTERS}")
        self.exporter = exporter

    def describe(self) -> dict[str, object]:
        return {"exporter": f"torch.onnx ({self.exporter})", "opset": OPSET, "onnx": onnx.__version__}

    def export_stage(self, module: nn.Module, spec: StageSpec, path: Path) -> list[Path]:
        """Export, consolidate weights (external data only when needed), check, infer shapes,
        and check the graph's inputs and outputs against the stage spec. Returns files written."""
        scratch = path.parent / f".{path.stem}.scratch"
        scratch.mkdir()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # Tracer warnings about shape asserts in diffusers/transformers are expected
                # for fixed-shape export; the graph is validated below instead.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    spec.dummy_inputs(),
                    str(scratch / "model.onnx"),
                    input_names=[t.name for t in spec.inputs],
                    output_names=[t.name for t in spec.outputs],
                    opset_version=OPSET,
                    dynamo=self.exporter == "dynamo",
                    do_constant_folding=True,
                )
            proto = onnx.load(str(scratch / "model.onnx"))
            _declare_output_shapes(proto, spec)
            weight_bytes = sum(len(t.raw_data) for t in proto.graph.initializer)
            external = weight_bytes > EXTERNAL_DATA_BYTES
            data_name = path.name + ".data"
            onnx.save_model(
                proto,
                str(path),
                save_as_external_data=external,
                all_tensors_to_one_file=True,
                location=data_name,
            )
            del proto
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        onnx.checker.check_model(str(path))
        onnx.shape_inference.infer_shapes_path(str(path), strict_mode=True)
        check_io(path, spec)
        return [path, path.parent / data_name] if external else [path]


def _declare_output_shapes(proto: onnx.ModelProto, spec: StageSpec) -> None:
    """Write the spec's fixed output shapes into the graph where the exporter left them
    symbolic; strict shape inference then fails if the graph disagrees."""
    for value, tensor in zip(proto.graph.output, spec.outputs, strict=True):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(tensor.shape) or any(not d.dim_value for d in dims):
            del dims[:]
            for size in tensor.shape:
                dims.add().dim_value = size


def check_io(path: Path, spec: StageSpec) -> None:
    """The graph's inputs and outputs must be exactly the spec's names, shapes and dtypes."""
    graph = onnx.load(str(path), load_external_data=False).graph
    for kind, values, tensors in (
        ("input", graph.input, spec.inputs),
        ("output", graph.output, spec.outputs),
    ):
        got = [
            (v.name, tuple(d.dim_value for d in v.type.tensor_type.shape.dim), v.type.tensor_type.elem_type)
            for v in values
        ]
        want = [(t.name, t.shape, _ONNX_DTYPES[t.dtype]) for t in tensors]
        if got != want:
            raise RuntimeError(f"{path.name}: graph {kind}s {got} do not match the stage spec {want}")
