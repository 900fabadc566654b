"""A small but real ONNX artifact built without torch: four runnable stage graphs (router:
pooled colour -> scores; encoder: 1x1 conv; UNet: identity; decoder: 1x1 conv + nearest x4)
and a manifest written by the exporter's own `write_manifest`. Runtimes, `upscale`, `bench`
and the manifest checks treat it as any export; it takes milliseconds to make, so the
hostile-input corpus can tamper with hundreds of copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mor_edge.atomic import mark
from mor_edge.export.manifest import write_manifest

LR = 16
SCALE = 4
K = 4
LATENT = 4


def _value(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _graph(
    name: str,
    inputs: list[tuple[str, list[int]]],
    outputs: list[tuple[str, list[int]]],
    nodes: list[onnx.NodeProto],
    init: list[onnx.TensorProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name, [_value(n, s) for n, s in inputs], [_value(n, s) for n, s in outputs], init
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def stage_graphs() -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(0)
    lr, latent = [1, 3, LR, LR], [1, LATENT, LR, LR]
    image = [1, 3, LR * SCALE, LR * SCALE]
    gate = numpy_helper.from_array(rng.random((3, K), dtype=np.float32), "gate")
    conv_in = numpy_helper.from_array(rng.random((LATENT, 3, 1, 1), dtype=np.float32) / 3, "w_in")
    conv_out = numpy_helper.from_array(np.full((3, LATENT, 1, 1), 1 / LATENT, np.float32), "w_out")
    scales = numpy_helper.from_array(np.array([1, 1, SCALE, SCALE], np.float32), "scales")
    return {
        "router": _graph(
            "router",
            [("lr", lr)],
            [("s", [1, K])],
            [
                helper.make_node("GlobalAveragePool", ["lr"], ["pooled"]),
                helper.make_node("Flatten", ["pooled"], ["flat"]),
                helper.make_node("MatMul", ["flat", "gate"], ["logits"]),
                helper.make_node("Sigmoid", ["logits"], ["s"]),
            ],
            [gate],
        ),
        "encoder": _graph(
            "encoder",
            [("lr", lr)],
            [("latent", latent)],
            [helper.make_node("Conv", ["lr", "w_in"], ["latent"])],
            [conv_in],
        ),
        "unet": _graph(
            "unet",
            [("latent", latent)],
            [("x0", latent)],
            [helper.make_node("Identity", ["latent"], ["x0"])],
            [],
        ),
        "decoder": _graph(
            "decoder",
            [("x0", latent), ("lr", lr)],
            [("image", image)],
            [
                helper.make_node("Conv", ["x0", "w_out"], ["small"]),
                helper.make_node("Resize", ["small", "", "scales"], ["image"], mode="nearest"),
            ],
            [conv_out, scales],
        ),
    }


def stage_io() -> dict[str, dict[str, list[dict[str, Any]]]]:
    lr = {"name": "lr", "shape": [1, 3, LR, LR], "dtype": "float32"}
    latent = {"name": "latent", "shape": [1, LATENT, LR, LR], "dtype": "float32"}
    return {
        "router": {"inputs": [lr], "outputs": [{"name": "s", "shape": [1, K], "dtype": "float32"}]},
        "encoder": {"inputs": [lr], "outputs": [latent]},
        "unet": {"inputs": [latent], "outputs": [{**latent, "name": "x0"}]},
        "decoder": {
            "inputs": [{**latent, "name": "x0"}, lr],
            "outputs": [{"name": "image", "shape": [1, 3, LR * SCALE, LR * SCALE], "dtype": "float32"}],
        },
    }


def write_toy_artifact(folder: Path) -> Path:
    """A static, one-bucket ONNX artifact in `folder` (made here)."""
    folder.mkdir(parents=True)
    stages: dict[str, Any] = {}
    for name, graph in stage_graphs().items():
        onnx.save(graph, str(folder / f"{name}.onnx"))
        stages[name] = {
            **stage_io()[name],
            "precision": "fp32",
            "variants": [{"file": f"{name}.onnx", "buckets": [0] if name in ("encoder", "unet") else None}],
            **({"bucket_variant": [0]} if name in ("encoder", "unet") else {}),
        }
    manifest = {
        "schema_version": 1,
        "created_by": {"mor_edge": "test"},
        "model": {"name": "toy", "label": "toy", "hash": "0" * 64, "source": "builtin"},
        "target": "onnx",
        "precision": "fp32",
        "routing": {"mode": "static", "buckets": [[0.5] * K]},
        "calibration": None,
        "scale": SCALE,
        "colour": {"tile_margin": 0},
        "stages": stages,
    }
    mark(folder, "artifact")
    write_manifest(folder, manifest)
    return folder
