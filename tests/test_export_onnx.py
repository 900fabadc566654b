"""ONNX export, manifest, ONNX Runtime parity and latency on the tiny preset, both routings."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from mor_edge.atomic import MARKER
from mor_edge.cli import main
from mor_edge.config import tiny_config
from mor_edge.errors import UserError
from mor_edge.export import onnx_export
from mor_edge.export.exporter import export
from mor_edge.export.int8 import float_only_nodes
from mor_edge.export.manifest import MANIFEST_NAME, Artifact, ArtifactError, sha256_file
from mor_edge.export.routing_plan import default_buckets
from mor_edge.model import MoRSR, model_fingerprint
from mor_edge.runtimes import parity as parity_module
from mor_edge.runtimes.latency import run_bench
from mor_edge.runtimes.parity import run_parity
from mor_edge.runtimes.registry import load_runtime

KEEP = "MOR_EDGE_KEEP_ARTIFACT"  # `make test` keeps the static one for the runtime-only check


@pytest.fixture(scope="module")
def artifacts(tiny_model: MoRSR, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    made = {
        routing: export(tiny_model, root / routing, routing=routing, progress=False)
        for routing in ("static", "dynamic")
    }
    if os.environ.get(KEEP):
        shutil.rmtree(os.environ[KEEP], ignore_errors=True)
        shutil.copytree(made["static"], os.environ[KEEP])
    return made


@pytest.mark.parametrize("routing", ["static", "dynamic"])
def test_fp32_parity_gates_pass(tiny_model: MoRSR, artifacts: dict[str, Path], routing: str) -> None:
    report = run_parity(load_runtime(artifacts[routing]), tiny_model, samples=3)
    assert report["passed"], report["failures"]
    assert report["end_to_end"]["psnr_db"] >= 60
    for stage in ("router", "encoder", "unet", "decoder"):
        assert report[stage]["max_abs_scaled"] <= 1e-4
    assert report["routing_agreement"] == 1.0
    # bucketing is not free on this model: the bucketed reference differs from exact routing
    assert 10 < report["bucketing_cost_psnr_db"] < 100


def test_manifest_describes_the_files(tiny_model: MoRSR, artifacts: dict[str, Path]) -> None:
    folder = artifacts["static"]
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["schema_version"] == 1
    assert manifest["model"]["hash"] == model_fingerprint(tiny_model)
    assert manifest["target"] == "onnx" and manifest["precision"] == "fp32"
    assert manifest["created_by"]["opset"] == onnx_export.OPSET
    assert len(manifest["routing"]["buckets"]) == len(default_buckets(tiny_model)) == 16
    files = {p.name for p in folder.iterdir()} - {MANIFEST_NAME, MARKER}
    assert set(manifest["files"]) == files
    for name, digest in manifest["files"].items():
        assert sha256_file(folder / name) == digest
    for stage, entry in manifest["stages"].items():
        assert entry["variants"], stage
        if stage in ("encoder", "unet"):
            assert len(entry["bucket_variant"]) == 16
            assert sorted(b for v in entry["variants"] for b in v["buckets"]) == list(range(16))
        graph = onnx.load(str(folder / entry["variants"][0]["file"])).graph
        assert [i.name for i in graph.input] == [t["name"] for t in entry["inputs"]]
        out_shape = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
        assert out_shape == entry["outputs"][0]["shape"]
    dynamic = json.loads((artifacts["dynamic"] / MANIFEST_NAME).read_text())
    assert [t["name"] for t in dynamic["stages"]["unet"]["inputs"]] == ["latent", "s"]
    graph = onnx.load(str(artifacts["dynamic"] / "unet.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"TopK", "Gather"} <= ops


def test_dynamic_and_static_agree_on_a_bucket_centre(artifacts: dict[str, Path]) -> None:
    static, dynamic = load_runtime(artifacts["static"]), load_runtime(artifacts["dynamic"])
    centres = static.artifact.bucket_centres
    latent = np.random.default_rng(0).standard_normal((1, 4, 64, 64)).astype(np.float32)
    lr = np.random.default_rng(1).random((1, 3, 64, 64)).astype(np.float32)
    for bucket in (0, 5, 15):
        s = centres[bucket : bucket + 1]
        for stage, inputs in (("unet", {"latent": latent}), ("encoder", {"lr": lr})):
            a = static.run_stage(stage, inputs, bucket)
            b = dynamic.run_stage(stage, {**inputs, "s": s})
            assert np.abs(a - b).max() / max(1.0, np.abs(a).max()) < 1e-4


def test_bench_times_the_calls_it_reports(artifacts: dict[str, Path]) -> None:
    """Every stage is run warm-up + timed times alone, and again inside each end-to-end run;
    the timings are the calls' own (the end to end run is never faster than its slowest stage)."""
    runtime = load_runtime(artifacts["dynamic"], threads=1)
    calls: list[str] = []
    run_stage = runtime.run_stage

    def counted(stage: str, values: dict[str, np.ndarray], bucket: int | None = None) -> np.ndarray:
        calls.append(stage)
        return run_stage(stage, values, bucket)

    runtime.run_stage = counted  # type: ignore[method-assign]
    report = run_bench(runtime, warmup=1, runs=3, progress=False)
    assert set(report["stages"]) == {"router", "encoder", "unet", "decoder"}
    assert {stage: calls.count(stage) for stage in report["stages"]} == dict.fromkeys(report["stages"], 4 + 4)
    assert report["end_to_end"]["min_ms"] >= max(t["min_ms"] for t in report["stages"].values()) * 0.5
    assert report["runtime"] == "onnxruntime" and report["threads"] == 1 and report["end_to_end"]["runs"] == 3
    # no timing ratios here: speed belongs to benchmarks/, not to tests on a shared machine


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_corrupted_or_missing_file_is_detected(artifacts: dict[str, Path], tmp_path: Path) -> None:
    broken = _copy(artifacts["dynamic"], tmp_path / "broken")
    data = bytearray((broken / "unet.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "unet.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"unet\.onnx does not match its sha256"):
        load_runtime(broken)
    missing = _copy(artifacts["dynamic"], tmp_path / "missing")
    (missing / "decoder.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"decoder\.onnx is missing"):
        load_runtime(missing)


def test_other_schema_version_and_missing_stage_are_refused(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    other = _copy(artifacts["dynamic"], tmp_path / "other")
    manifest = json.loads((other / MANIFEST_NAME).read_text())
    (other / MANIFEST_NAME).write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema version 99"):
        Artifact(other)
    del manifest["stages"]["router"]
    (other / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="no router stage"):
        Artifact(other)


def test_refused_overwrite_leaves_the_old_artifact(
    tiny_model: MoRSR, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    folder = _copy(artifacts["dynamic"], tmp_path / "keep")
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    with pytest.raises(UserError, match="--force"):
        export(tiny_model, folder, routing="dynamic", progress=False)
    assert {p.name: sha256_file(p) for p in folder.iterdir()} == before
    Artifact(folder)


def test_failed_export_leaves_nothing(
    tiny_model: MoRSR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = onnx_export.OnnxTarget.export_stage

    def flaky(self, module, spec, path, precision="fp32"):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(self, module, spec, path, precision)

    monkeypatch.setattr(onnx_export.OnnxTarget, "export_stage", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        export(tiny_model, tmp_path / "half", routing="dynamic", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_fp16_export_passes_fp16_gates(tiny_model: MoRSR, tmp_path: Path) -> None:
    folder = export(tiny_model, tmp_path / "fp16", routing="dynamic", precision="fp16", progress=False)
    graph = onnx.load(str(folder / "unet.onnx")).graph
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    report = run_parity(load_runtime(folder), tiny_model, samples=2)
    assert report["passed"], report["failures"]
    assert report["end_to_end"]["psnr_db"] >= 30


def test_cli_export_parity_bench_upscale(
    tiny_model: MoRSR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole CLI path of an export made with --denoise: the manifest records it, `parity`
    compares with the model at that setting, and `upscale` gives the model's image at it."""
    runner = CliRunner()
    out = tmp_path / "art"
    result = runner.invoke(
        main,
        [
            "export",
            "--routing",
            "dynamic",
            "--out",
            str(out),
            "--samples",
            "2",
            "--skip-bench",
            "--denoise",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output
    assert json.loads((out / "manifest.json").read_text())["colour"]["denoise"] == 0.5
    result = runner.invoke(main, ["parity", str(out), "--samples", "2", "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["passed"]
    assert {"router", "encoder", "unet", "decoder", "end_to_end", "routing_agreement"} <= set(report)
    result = runner.invoke(main, ["bench", str(out), "--runs", "2", "--warmup", "1", "--json"])
    bench = json.loads(result.output)
    assert set(bench["stages"]) == {"router", "encoder", "unet", "decoder"}
    assert (bench["routing"], bench["precision"], bench["end_to_end"]["runs"]) == ("dynamic", "fp32", 2)

    lr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    from mor_edge.image_io import load_image, save_image, to_uint8

    save_image(to_uint8(lr), tmp_path / "in.png")
    result = runner.invoke(
        main, ["upscale", str(tmp_path / "in.png"), str(tmp_path / "sr.png"), "--artifact", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "engine: onnxruntime 1.32" in result.output and "(CPUExecutionProvider, " in result.output
    x = torch.from_numpy(load_image(tmp_path / "in.png").array())
    with torch.no_grad():
        plain = tiny_model(x)
        monkeypatch.setattr(tiny_model.config, "denoise", 0.5)
        want = tiny_model(x)
    got = torch.from_numpy(load_image(tmp_path / "sr.png").array())
    assert (got - want).abs().max() <= 1 / 255 + 1e-6
    assert (got - plain).abs().max() > 4 / 255  # the setting reached the graph

    # A gate that fails makes the command fail, loudly.
    monkeypatch.setitem(
        parity_module.GATES, "fp32", {**parity_module.GATES["fp32"], "end_to_end_psnr_db": 500.0}
    )
    result = runner.invoke(main, ["parity", str(out), "--samples", "1"])
    assert result.exit_code == 1 and "FAILED" in result.output
    result = runner.invoke(main, ["export", "--routing", "dynamic", "--out", str(out)])
    assert result.exit_code == 1 and "--force" in result.output


def test_onnx_artifact_golden_output(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """`upscale --artifact` with the static ONNX export of the built-in model, against the
    stored image (64x64 tiles over a 72x56 input: overlap, padding and blending included)."""
    from .golden import INPUT, assert_golden

    result = CliRunner().invoke(
        main, ["upscale", str(INPUT), str(tmp_path / "sr.png"), "--artifact", str(artifacts["static"])]
    )
    assert result.exit_code == 0, result.output
    assert_golden(tmp_path / "sr.png", "onnx_static_sr.png")


def test_onnx_int8_keeps_the_upsampler_and_the_attention_in_float(tmp_path: Path) -> None:
    """ONNX graphs write bicubic as two constant matmuls (ORT's cubic Resize was a third of an
    encoder tile), and INT8 leaves those and attention's activation-by-activation MatMuls in
    float: quantized, ORT fused the latter into a QLinearSoftmax that halved the UNet's speed."""
    import onnxruntime as ort

    from mor_edge.export.onnx_export import OnnxTarget, activation_matmuls
    from mor_edge.export.stages import StageModule
    from mor_edge.resize import bicubic_as_matmul
    from mor_edge.stage_contract import stage_specs

    torch.manual_seed(0)
    model = MoRSR(tiny_config()).eval()
    specs = stage_specs(model.config, "base")
    target = OnnxTarget()
    for stage in ("decoder", "unet"):
        source, quantized = tmp_path / f"{stage}.onnx", tmp_path / f"{stage}.int8.onnx"
        with bicubic_as_matmul():
            target.export_stage(StageModule(model, stage, "base"), specs[stage], source)
        samples = [specs[stage].dummy_inputs(seed) for seed in range(2)]
        kept = float_only_nodes(onnx.load(str(source)).graph)
        target.quantize_stage(source, quantized, samples, kept)
        graph = onnx.load(str(quantized)).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        if stage == "decoder":
            modes = [
                a.s for n in graph.node if n.op_type == "Resize" for a in n.attribute if a.name == "mode"
            ]
            assert modes and b"cubic" not in modes  # the VAE's nearest upsamplers remain
            float_matmuls = {n.name for n in graph.node if "/upsampler/" in n.name and n.op_type == "MatMul"}
            assert len(float_matmuls) == 2 and float_matmuls <= kept  # rows, then columns
        else:
            float_matmuls = activation_matmuls(source)
            # scores and weighted sum of each self- and cross-attention, nothing else
            assert len(float_matmuls) == 16 and all("/attn" in n for n in float_matmuls)
        for node in graph.node:
            if node.name in float_matmuls:
                assert not dequantized & set(node.input), node.name
        assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the rest is quantized
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{stage}.optimized.onnx")
        ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
        optimized = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
        assert "QLinearSoftmax" not in optimized and "QLinearConv" in optimized
