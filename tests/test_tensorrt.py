"""The TensorRT target on the tiny preset, checked without TensorRT: the ONNX it writes for
TensorRT's strongly typed networks (ModelOpt Q/DQ for INT8, AutoCast FP16) run by ONNX Runtime
against the parity gates, its Q/DQ structure, the build recipe, polygraphy's lint, and clean
refusals where TensorRT or a CUDA GPU is needed. Building and running engines needs both:
those tests are skipped here, saying why.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from mor_edge.calib.calibration_set import CalibrationSet
from mor_edge.calib.sampling import build_calibration_set
from mor_edge.cli import main
from mor_edge.export.exporter import export
from mor_edge.export.manifest import ArtifactError
from mor_edge.model import MoRSR
from mor_edge.routing import Buckets
from mor_edge.runtimes.parity import run_parity
from mor_edge.runtimes.registry import load_runtime
from mor_edge.runtimes.tensorrt_runtime import TensorRTUnavailable, check_engine_key, device_key

pytest.importorskip("modelopt", reason="the tensorrt target needs nvidia-modelopt (the tensorrt extra)")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
ONE_BUCKET = Buckets.grid(1, 4)  # one graph per stage: the 16-bucket path is the same code per variant


@pytest.fixture(scope="module")
def calibration(tiny_model: MoRSR) -> CalibrationSet:
    return build_calibration_set(tiny_model, samples=8, bucket_levels=1, progress=False)


@pytest.fixture(scope="module")
def int8(
    tiny_model: MoRSR, calibration: CalibrationSet, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trt")
    return {
        routing: export(
            tiny_model,
            root / routing,
            target="tensorrt",
            routing=routing,
            precision="int8",
            buckets=ONE_BUCKET if routing == "static" else None,
            calibration=calibration,
            progress=False,
        )
        for routing in ("static", "dynamic")
    }


def ops(path: Path) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("routing", ["static", "dynamic"])
def test_int8_passes_the_int8_gates_on_onnx_runtime(
    tiny_model: MoRSR, int8: dict[str, Path], routing: str
) -> None:
    report = run_parity(load_runtime(int8[routing], threads=1, runtime="onnxruntime"), tiny_model, samples=2)
    assert report["passed"], report["failures"]
    assert report["routing_agreement"] == 1.0
    assert min(report[s]["psnr_db"] for s in ("encoder", "unet", "decoder")) >= 25.0
    assert abs(report["hr_psnr_delta_db"]) <= 0.3


def test_onnx_runtime_quantization_is_left_as_modelopt_found_it(int8: dict[str, Path]) -> None:
    """ModelOpt patches ONNX Runtime's calibrators; after a TensorRT INT8 export they are ORT's
    own again, so an ONNX Runtime INT8 export in the same process still works."""
    from onnxruntime.quantization import calibrate, qdq_quantizer

    patched = [
        calibrate.MinMaxCalibrater.collect_data,
        calibrate.CalibraterBase.create_inference_session,
        calibrate.create_calibrator,
    ]
    assert all(f.__module__.startswith("onnxruntime.") for f in patched), [f.__module__ for f in patched]
    assert "check_opset_version" not in vars(qdq_quantizer.QDQQuantizer)  # ModelOpt's addition


def test_int8_graphs_are_explicit_qdq_with_float_where_planned(int8: dict[str, Path]) -> None:
    manifest = json.loads((int8["dynamic"] / "manifest.json").read_text())
    assert (
        manifest["created_by"]["tensorrt_network"] == "strongly typed"
        and manifest["routing"]["mode"] == "dynamic"
    )
    assert ops(int8["static"] / "router.onnx")["QuantizeLinear"] == 0  # the router stays FP32
    for routing in ("static", "dynamic"):
        unet_file = (
            manifest["stages"]["unet"]["variants"][0]["file"] if routing == "dynamic" else "unet.v0.onnx"
        )
        graph = onnx.load(str(int8[routing] / unet_file)).graph
        int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
        assert len(int8_weights) > 20  # weights quantized ahead of time, as initializers
        quantized_inputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        for node in graph.node:
            if node.op_type in ("Conv", "MatMul") and "conv_in" in node.name:
                assert not set(node.input) & quantized_inputs, node.name  # kept FP32: no Q/DQ
    # dynamic: nothing computed from `s` alone (gate logits, TopK, the gathered LoRA factors)
    # is quantized; Q/DQ sit on image activations and weights only
    graph = onnx.load(str(int8["dynamic"] / "unet.onnx")).graph
    image, from_s = {"latent"}, {"s"}
    for node in graph.node:  # topologically sorted
        if any(t in image for t in node.input):
            image.update(node.output)
        elif any(t in from_s for t in node.input):
            from_s.update(node.output)
    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert any(n.input[0] in image for n in quantizers)
    assert not [n.name for n in quantizers if n.input[0] in from_s]
    assert any(n.op_type == "TopK" for n in graph.node)


def test_manifest_holds_the_build_recipe_and_trtexec_lines(int8: dict[str, Path]) -> None:
    manifest = json.loads((int8["static"] / "manifest.json").read_text())
    assert manifest["target"] == "tensorrt" and manifest["created_by"]["tensorrt_min_version"] == "10.3"
    for stage, entry in manifest["stages"].items():
        for variant in entry["variants"]:
            recipe = variant["tensorrt_build"]
            assert recipe["network"] == "strongly typed"
            assert recipe["trtexec"].startswith(f"trtexec --onnx={variant['file']} ")
            assert "--stronglyTyped" in recipe["trtexec"] and "--int8" not in recipe["trtexec"]
            want = "graph" if stage == "router" else "Q/DQ nodes"
            assert recipe["precision_from"] == want, stage


def test_polygraphy_lint_is_clean_on_every_stage_file(int8: dict[str, Path]) -> None:
    for path in sorted(int8["dynamic"].glob("*.onnx")):
        result = subprocess.run(
            [str(Path(sys.executable).parent / "polygraphy"), "check", "lint", str(path)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0 and "PASSED" in result.stdout + result.stderr, (
            path.name,
            result.stderr[-400:],
        )


def test_fp16_is_autocast_with_fp32_io_and_passes_the_fp16_gates(tiny_model: MoRSR, tmp_path: Path) -> None:
    out = export(
        tiny_model, tmp_path / "fp16", target="tensorrt", precision="fp16", buckets=ONE_BUCKET, progress=False
    )
    graph = onnx.load(str(out / "unet.v0.onnx")).graph
    dtypes = collections.Counter(i.data_type for i in graph.initializer)
    assert dtypes[onnx.TensorProto.FLOAT16] > 50 and ops(out / "unet.v0.onnx")["Cast"] > 0
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in graph.input)
    router = onnx.load(str(out / "router.onnx")).graph  # the router stays FP32
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 for i in router.initializer)
    report = run_parity(load_runtime(out, threads=1, runtime="onnxruntime"), tiny_model, samples=2)
    assert report["passed"], report["failures"]


def test_the_cli_runs_parity_on_onnx_runtime_and_refuses_where_tensorrt_is_needed(
    int8: dict[str, Path], tmp_path: Path
) -> None:
    art = str(int8["static"])
    result = CliRunner().invoke(main, ["parity", art, "--runtime", "onnxruntime", "--samples", "1", "--json"])
    report = json.loads(result.output)
    assert report["runtime"]["runtime"] == "onnxruntime"
    assert report["runtime"]["providers_used"] == ["CPUExecutionProvider"]
    result = CliRunner().invoke(main, ["bench", art, "--runtime", "openvino"])
    assert result.exit_code == 1 and "tensorrt artifacts run on tensorrt or onnxruntime" in result.output
    result = CliRunner().invoke(main, ["bench", art, "--runtime", "onnxruntime", "--providers", "cuda"])
    assert result.exit_code == 1 and "no cuda provider" in result.output
    if HAS_TENSORRT:
        pytest.skip("TensorRT is installed: the refusals below are for machines without it")
    photo = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (90, 120, 200)).save(photo)
    for args in (
        ["build-engines", art],
        ["bench", art],
        ["upscale", str(photo), str(tmp_path / "o.png"), "--artifact", art],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "needs TensorRT" in result.output, (args, result.output)
        assert "Traceback" not in result.output
    with pytest.raises(TensorRTUnavailable):
        load_runtime(art)
    assert not (int8["static"] / "engines").exists()


def test_engines_of_another_device_are_refused(tmp_path: Path) -> None:
    key = device_key("NVIDIA Jetson AGX Orin", (8, 7), "10.3.0")
    assert key == "nvidia-jetson-agx-orin-sm87-trt10.3.0"
    check_engine_key({"key": key}, key, tmp_path)
    other = device_key("NVIDIA H100 80GB HBM3", (9, 0), "10.3.0")
    with pytest.raises(ArtifactError, match=r"engines built for 'nvidia-h100-80gb-hbm3-sm90-trt10\.3\.0'"):
        check_engine_key({"key": other}, key, tmp_path)


@pytest.mark.skipif(not HAS_TENSORRT, reason="building and running engines needs TensorRT and a CUDA GPU")
def test_engines_build_and_pass_parity(tiny_model: MoRSR, int8: dict[str, Path]) -> None:
    from mor_edge.export.tensorrt_engines import build_engines

    build_engines(int8["static"], progress=False)
    report = run_parity(load_runtime(int8["static"]), tiny_model, samples=2)
    assert report["passed"], report["failures"]
