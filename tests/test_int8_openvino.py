"""INT8 (ONNX Runtime QDQ and NNCF) and the OpenVINO target on the tiny preset.

Static exports here use one bucket (`--bucket-levels 1`) so each stage is one graph: the
16-bucket path is the same code run per variant and is covered by the float tests.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from mor_edge.calib.calibration_set import CalibrationSet
from mor_edge.calib.sampling import build_calibration_set
from mor_edge.cli import main
from mor_edge.errors import UserError
from mor_edge.export.exporter import export
from mor_edge.export.int8 import float_only_nodes, keep_float_groups, layer_group
from mor_edge.model import MoRSR
from mor_edge.routing import Buckets
from mor_edge.runtimes.latency import run_bench
from mor_edge.runtimes.parity import run_parity
from mor_edge.runtimes.registry import load_runtime

ONE_BUCKET = Buckets.grid(1, 4)


@pytest.fixture(scope="module")
def calibration(tiny_model: MoRSR) -> CalibrationSet:
    return build_calibration_set(
        tiny_model, 16, bucket_levels=1, routings=("static", "dynamic"), progress=False
    )


@pytest.fixture(scope="module")
def int8_artifacts(
    tiny_model: MoRSR, calibration: CalibrationSet, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int8")
    return {
        target: export(
            tiny_model,
            root / target,
            target=target,
            precision="int8",
            buckets=ONE_BUCKET,
            calibration=calibration,
            target_options={"calibration_method": "percentile"} if target == "onnx" else None,
            progress=False,
        )
        for target in ("onnx", "openvino")
    }


def test_float_only_nodes_keep_routing_and_constants_in_float() -> None:
    """Gate (reads s), TopK and the LoRA conv whose weight comes from s stay float; the base
    conv of the image is quantizable; a node fed by constants only stays float."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    init = [
        helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1, 1], np.ones(16).tolist()),
        helper.make_tensor("g", TensorProto.FLOAT, [4, 16], np.ones(64).tolist()),
        helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0]),
        helper.make_tensor("shape", TensorProto.INT64, [4], [4, 4, 1, 1]),
    ]
    nodes = [
        helper.make_node("MatMul", ["s", "g"], ["logits"], name="/gate/MatMul"),
        helper.make_node("Reshape", ["logits", "shape"], ["lora_w"], name="/lora/Reshape"),
        helper.make_node("Conv", ["x", "w"], ["base"], name="/block/base/Conv"),
        helper.make_node("Conv", ["base", "lora_w"], ["delta"], name="/block/lora/Conv"),
        helper.make_node("Add", ["c", "c"], ["two"], name="/time/Add"),
        helper.make_node("Add", ["base", "delta"], ["y0"], name="/block/Add"),
        helper.make_node("Mul", ["y0", "two"], ["y"], name="/block/Mul"),
    ]
    graph = helper.make_graph(nodes, "g", [x, s], [y], init)
    assert float_only_nodes(graph) == {"/gate/MatMul", "/lora/Reshape", "/block/lora/Conv", "/time/Add"}
    assert (
        layer_group("/unet/down_blocks.1/attentions.0/transformer/MatMul")
        == "unet/down_blocks.1/attentions.0"
    )
    groups = {"unet/conv_in/base": ["a"], "unet/mid_block/resnets.0": ["b"], "decoder/conv_out": ["c"]}
    assert keep_float_groups("default", groups) == ["decoder/conv_out", "unet/conv_in/base"]
    rows = [{"group": "unet/mid_block/resnets.0", "psnr_db": 12.0}]
    assert "unet/mid_block/resnets.0" in keep_float_groups("auto", groups, rows)
    assert keep_float_groups("none", groups) == []


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_int8_passes_its_gates(tiny_model: MoRSR, int8_artifacts: dict[str, Path], target: str) -> None:
    folder = int8_artifacts[target]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    assert manifest["stages"]["router"]["precision"] == "fp32"  # routing stays in float
    assert manifest["calibration"]["samples"] == 16
    report = run_parity(load_runtime(folder), tiny_model, samples=3)
    assert report["passed"], report["failures"]
    assert report["routing_agreement"] == 1.0
    assert report["router"]["max_abs"] < 1e-4
    assert abs(report["hr_psnr_delta_db"]) <= 0.3
    # quantized for real: not bit-exact, but close
    assert 25 <= report["unet"]["psnr_db"] < 80


def test_onnx_int8_graph_is_qdq_with_float_first_and_last_convs(int8_artifacts: dict[str, Path]) -> None:
    graph = onnx.load(str(int8_artifacts["onnx"] / "unet.v0.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20
    int8_weights = [t for t in graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    assert int8_weights, "conv weights are stored as int8"
    consumers = {n.name: n for n in graph.node}
    conv_in = next(n for name, n in consumers.items() if "/conv_in/" in name and n.op_type == "Conv")
    producers = {o: n for n in graph.node for o in n.output}
    weight = conv_in.input[1]
    assert weight not in producers or producers[weight].op_type != "DequantizeLinear"


def test_openvino_int8_keeps_attention_in_float(int8_artifacts: dict[str, Path]) -> None:
    """OpenVINO fuses each self-attention into one ScaledDotProductAttention op (a one-head
    cross-attention, whose keys and values of the constant prompt fold to constants, stays
    two MatMuls); no FakeQuantize feeds attention's query, key, value or products
    (quantized, they made the UNet slower than FP32), while most convolutions read quantized
    inputs."""
    import openvino as ov

    model = ov.Core().read_model(str(int8_artifacts["openvino"] / "unet.v0.xml"))

    def source(op: Any, i: int) -> str:
        node = op.input_value(i).get_node()
        while node.get_type_name() in ("Convert", "Transpose", "Reshape"):
            node = node.input_value(0).get_node()
        return str(node.get_type_name())

    ops = list(model.get_ordered_ops())
    fused = [op for op in ops if op.get_type_name() == "ScaledDotProductAttention"]
    products = [
        op
        for op in ops
        if op.get_type_name() == "MatMul" and re.search(r"/attn\d/MatMul(_1)?$", op.get_friendly_name())
    ]
    assert len(fused) >= 4 and len(fused) + len(products) // 2 == 8  # 4 self-, 4 cross-attentions
    assert not any(source(op, i) == "FakeQuantize" for op in fused for i in range(3))
    assert not any(source(op, i) == "FakeQuantize" for op in products for i in range(2))
    convs = [op for op in ops if op.get_type_name() == "Convolution"]
    assert sum(source(op, 0) == "FakeQuantize" for op in convs) > len(convs) // 2


def test_openvino_int8_keeps_group_norm_statistics_in_float(int8_artifacts: dict[str, Path]) -> None:
    """GroupNorm is written as reductions for OpenVINO; no FakeQuantize may sit inside it (NNCF
    put them on the means, variances and their products: the encoder's stage PSNR fell from
    29.3 to 18.1 dB), while the convolutions still read quantized inputs."""
    from mor_edge.runtimes.openvino_runtime import ov

    for stage in ("encoder.v0", "decoder"):
        model = ov.Core().read_model(str(int8_artifacts["openvino"] / f"{stage}.xml"))
        fed = [
            target.get_node()
            for op in model.get_ops()
            if op.get_type_name() == "FakeQuantize"
            for target in op.output(0).get_target_inputs()
        ]
        kinds = collections.Counter(node.get_type_name() for node in fed)
        reductions_form = {"ReduceMean", "Subtract", "Multiply", "Sqrt", "Divide", "Tile"}
        assert kinds["Convolution"] > 0 and not set(kinds) & reductions_form, (stage, kinds)
        assert not [n.get_friendly_name() for n in fed if "norm" in n.get_friendly_name()]


def test_dynamic_int8_keeps_the_gate_in_float(
    tiny_model: MoRSR, calibration: CalibrationSet, tmp_path: Path
) -> None:
    folder = export(
        tiny_model,
        tmp_path / "dyn",
        routing="dynamic",
        precision="int8",
        calibration=calibration,
        progress=False,
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["routing"]["dynamic_form"] == "gather"
    graph = onnx.load(str(folder / "unet.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name.startswith("/gate") and node.op_type in ("Gemm", "MatMul"):
            assert all(
                producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input
            )
    report = run_parity(load_runtime(folder), tiny_model, samples=2)
    assert report["passed"], report["failures"]
    assert report["routing_agreement"] == 1.0


def test_constant_image_calibration_is_caught(
    tiny_model: MoRSR, calibration: CalibrationSet, tmp_path: Path
) -> None:
    """Ranges from one flat grey image clip real activations: the gates must fail."""
    lr = torch.full_like(calibration.lr, 0.5)
    with torch.no_grad():
        _, z, x0, _ = tiny_model.run_stages(lr, ONE_BUCKET.centres.expand(len(lr), -1), ONE_BUCKET)
    flat = CalibrationSet(
        recipe=calibration.recipe,
        lr=lr,
        s=calibration.s,
        bucket=calibration.bucket,
        natural_bucket=calibration.natural_bucket,
        captured={"static": {"latent": z, "x0": x0}},
    )
    folder = export(
        tiny_model, tmp_path / "flat", precision="int8", buckets=ONE_BUCKET, calibration=flat, progress=False
    )
    report = run_parity(load_runtime(folder), tiny_model, samples=3)
    assert not report["passed"]
    assert any("PSNR" in f for f in report["failures"])


@pytest.mark.parametrize("precision", ["fp32", "w8"])  # fp16 is the fp32 IR, weights compressed
def test_openvino_float_and_weight_only(tiny_model: MoRSR, tmp_path: Path, precision: str) -> None:
    folder = export(
        tiny_model,
        tmp_path / precision,
        target="openvino",
        precision=precision,
        buckets=ONE_BUCKET,
        progress=False,
    )
    assert (folder / "unet.v0.xml").is_file() and (folder / "unet.v0.bin").is_file()
    # written for OpenVINO's kernels: GroupNorm as reductions (no MVN, whose reshapes cost a
    # layout reorder each) and the bicubic upsample as matmuls (no Interpolate in the encoder)
    from mor_edge.runtimes.openvino_runtime import ov

    layer_norms = sum(isinstance(m, torch.nn.LayerNorm) for m in tiny_model.unet.modules())
    for stage, mvn in (("encoder.v0", 0), ("unet.v0", layer_norms), ("decoder", 0)):
        ops = [op.get_type_name() for op in ov.Core().read_model(str(folder / f"{stage}.xml")).get_ops()]
        # the UNet's LayerNorms are MVN too, and stay so
        assert (ops.count("MVN"), "GroupNormalization" in ops, "ReduceMean" in ops) == (mvn, False, True)
        assert stage != "encoder.v0" or "Interpolate" not in ops
    runtime = load_runtime(folder, threads=2)
    assert runtime.describe()["runtime"] == "openvino"
    # FP32 runs in f32; a weight-only INT8 artifact's float work in bf16 where the CPU has it
    from mor_edge.runtimes.openvino_runtime import cpu_has_bf16

    reduced = "bf16" if cpu_has_bf16() else "f32 (no bf16 on this CPU)"
    assert runtime.describe()["inference_precision"] == ("f32" if precision == "fp32" else reduced)
    report = run_parity(runtime, tiny_model, samples=2)
    assert report["passed"], report["failures"]
    if precision == "fp32":
        assert report["end_to_end"]["psnr_db"] >= 60
    bench = run_bench(runtime, warmup=1, runs=2, progress=False)
    assert (bench["runtime"], bench["precision"], bench["end_to_end"]["runs"]) == ("openvino", precision, 2)


def test_bad_requests_are_refused(tiny_model: MoRSR, calibration: CalibrationSet, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="precision must be one of"):
        export(tiny_model, tmp_path / "a", target="onnx", precision="w8", progress=False)
    with pytest.raises(UserError, match="other static buckets"):
        export(tiny_model, tmp_path / "b", precision="int8", calibration=calibration, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".*"))  # no temporary folders left behind


def test_cli_int8_export_with_sensitivity(tmp_path: Path) -> None:
    cal = tmp_path / "cal"
    runner = CliRunner()
    assert (
        runner.invoke(
            main,
            ["calibrate", "--samples", "8", "--bucket-levels", "1", "--routing", "static", "--out", str(cal)],
        ).exit_code
        == 0
    )
    out = tmp_path / "art"
    result = runner.invoke(
        main,
        [
            "export",
            "--precision",
            "int8",
            "--bucket-levels",
            "1",
            "--calib",
            str(cal),
            "--keep-float",
            "auto",
            "--out",
            str(out),
            "--samples",
            "2",
            "--skip-bench",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "kept in float" in result.output and "dB" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    rows = manifest["stages"]["decoder"]["quantization"]["sensitivity"]
    assert rows == sorted(rows, key=lambda r: r["psnr_db"]) and len(rows) >= 5
    assert "PASSED" in result.output


def test_an_input_port_with_two_names_is_read_by_the_graphs_own(tmp_path: Path) -> None:
    """OpenVINO folds a float->float Cast after the input `s` into the port, which then also
    carries the Cast's output name (a dynamic export was refused for it): the stage contract
    reads the graph's name."""
    import openvino as ov

    from mor_edge.runtimes.openvino_runtime import model_signature

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["s"], ["/Cast_10_output_0"], to=TensorProto.FLOAT, name="/Cast_10"),
            helper.make_node("Relu", ["/Cast_10_output_0"], ["y"], name="/Relu"),
        ],
        "g",
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "g.onnx"))
    model = ov.convert_model(str(tmp_path / "g.onnx"))
    assert model.inputs[0].get_names() == {"s", "/Cast_10_output_0"}
    assert model_signature(model) == ([("s", (1, 4), "float32")], [("y", (1, 4), "float32")])


def test_openvino_bf16_runs_the_image_stages_in_bfloat16_where_the_cpu_has_it(
    tiny_model: MoRSR, tmp_path: Path
) -> None:
    """bf16 is the FP32 IR compiled for bfloat16: the image stages' compiled models say bf16 on
    a CPU that computes it natively (f32 elsewhere, and the runtime says why); the router
    stays f32; the picture passes the bf16 gates (58.5 dB end to end on the built-in model)."""
    from mor_edge.runtimes.openvino_runtime import cpu_has_bf16

    folder = export(
        tiny_model, tmp_path / "bf16", target="openvino", precision="bf16", buckets=ONE_BUCKET, progress=False
    )
    runtime = load_runtime(folder, threads=1)
    native = cpu_has_bf16()
    ran = {
        stage: runtime.session(stage, 0 if stage in ("encoder", "unet") else None)
        .get_property("INFERENCE_PRECISION_HINT")
        .get_type_name()
        for stage in ("router", "encoder", "unet", "decoder")
    }
    image = "bf16" if native else "f32"
    assert ran == {"router": "f32", "encoder": image, "unet": image, "decoder": image}
    assert runtime.describe()["inference_precision"] == ("bf16" if native else "f32 (no bf16 on this CPU)")
    report = run_parity(runtime, tiny_model, samples=2)
    assert report["passed"], report["failures"]
    assert report["router"]["psnr_db"] > 100  # FP32: the routing is exact
    if native:  # bfloat16 really ran: not the FP32 graph's 130+ dB
        assert 40 <= report["end_to_end"]["psnr_db"] < 90, report["end_to_end"]


TELEMETRY_PROBE = """
import os, sys, time
os.environ.pop("CI", None)
import openvino_telemetry as tm
import openvino_telemetry.backend.backend_ga4 as ga4
sent = []
ga4.GA4Backend.send = lambda self, message: sent.append(message)  # nothing leaves the machine
if sys.argv[1] == "bare":
    import openvino as ov
    ov.convert_model(sys.argv[2])
else:
    from mor_edge.builtin import random_model
    from mor_edge.export.exporter import export
    from mor_edge.routing import Buckets
    export(random_model(), sys.argv[2], target="openvino", buckets=Buckets.grid(1, 4), progress=False)
time.sleep(1)  # the sender is a thread pool
print(tm.Telemetry().consent, len(sent))
"""


def test_openvino_exports_send_no_telemetry(tmp_path: Path) -> None:
    """OpenVINO (at import and in its converter) and NNCF would send usage data (offline, a
    child process printed a traceback mid-export): mor-edge's export turns it off. The bare
    converter, as a control, sends."""
    graph = tmp_path / "g.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(relu), graph)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    runs = {
        how: subprocess.run(
            [sys.executable, "-c", TELEMETRY_PROBE, how, str(where)], capture_output=True, text=True, env=env
        )
        for how, where in (("bare", graph), ("export", tmp_path / "artifact"))
    }
    for done in runs.values():
        assert done.returncode == 0, done.stderr
    consent, sent = runs["bare"].stdout.split()
    if not (Path.home() / "intel" / "openvino_telemetry").is_file():  # the user has not opted out
        assert consent == "True" and int(sent) > 0
    assert runs["export"].stdout.split() == ["False", "0"]
