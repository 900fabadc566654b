"""Other tools' graphs loaded with a runtime's own settings (what `benchmarks/optimum_compare.py`
times mor-edge's exports against), and the alternating timer it uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mor_edge.export.manifest import Artifact
from mor_edge.runtimes.latency import time_alternating
from mor_edge.runtimes.openvino_runtime import OpenVinoRuntime
from mor_edge.runtimes.ort_runtime import OrtRuntime

from .toy_artifact import write_toy_artifact


def optimum_like_unet(path: Path) -> Path:
    """A graph shaped like Optimum's UNet export: a dynamic batch and size, and an int64
    scalar timestep (out = sample * timestep)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["timestep"], ["t"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["sample", "t"], ["out_sample"]),
        ],
        "unet",
        [
            helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 4, "height", "width"]),
            helper.make_tensor_value_info("timestep", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("runtime_class", [OrtRuntime, OpenVinoRuntime])
def test_a_foreign_graph_runs_with_the_runtimes_settings(runtime_class: type, tmp_path: Path) -> None:
    artifact = Artifact(write_toy_artifact(tmp_path / "toy"))
    runtime = runtime_class(artifact, threads=1)
    call, inputs = runtime.load_graph(optimum_like_unet(tmp_path / "unet.onnx"))
    names = {name: (shape, dtype) for name, shape, dtype in inputs}
    assert set(names) == {"sample", "timestep"}
    assert names["timestep"] == ((), "int64")
    assert names["sample"][1] == "float32" and names["sample"][0][1] == 4
    if runtime_class is OpenVinoRuntime:  # a dynamic dimension reads -1: no stage contract has one
        assert names["sample"][0] == (-1, 4, -1, -1)
    sample = np.random.default_rng(0).random((2, 4, 8, 6), dtype=np.float32)
    (out,) = call({"sample": sample, "timestep": np.array(999, np.int64)})
    np.testing.assert_allclose(out, sample * 999, rtol=1e-6)


def test_alternating_timer_calls_each_in_turn() -> None:
    """Every call runs warm-up + runs times, in rotated order, and its median is its own."""
    order: list[str] = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    medians = time_alternating(calls, warmup=1, runs=3)
    assert set(medians) == {"a", "b", "c"} and all(m >= 0 for m in medians.values())
    assert order == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
