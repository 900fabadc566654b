"""Core ML conversion of the tiny preset: multifunction buckets, dynamic routing, weight
compression, validation without a Core ML runtime, and the macOS-only prediction path."""

from __future__ import annotations

import copy
import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mor_edge.cli import main
from mor_edge.export.coreml_export import FP16_NORMAL, compare_weights, package_weights, relative_error
from mor_edge.export.exporter import export
from mor_edge.export.manifest import Artifact
from mor_edge.export.stages import StageModule
from mor_edge.model import MoRSR
from mor_edge.routing import Buckets
from mor_edge.runtimes.coreml_runtime import CoreMLUnavailable, package_signature
from mor_edge.runtimes.parity import run_parity
from mor_edge.runtimes.registry import load_runtime
from mor_edge.stage_contract import StageIOError

ON_MACOS = platform.system() == "Darwin"
TWO_BUCKETS = Buckets(Buckets.grid(2, 4).centres[[0, 15]])
W8_RATIO_BOUND = 0.65  # dynamic unet, W8 package weights over 2 bytes per parameter: 0.62 measured


def weight_bytes(package: Path) -> int:
    return sum(p.stat().st_size for p in (package / "Data" / "com.apple.CoreML" / "weights").iterdir())


@pytest.fixture(scope="module")
def static_fp16(tiny_model: MoRSR, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coreml") / "static"
    return export(tiny_model, out, target="coreml", precision="fp16", buckets=TWO_BUCKETS, progress=False)


def test_static_buckets_are_functions_of_one_package(static_fp16: Path) -> None:
    manifest = json.loads((static_fp16 / "manifest.json").read_text())
    assert manifest["created_by"]["deployment_target"] == "iOS18"  # multifunction
    unet = manifest["stages"]["unet"]
    assert [v["function"] for v in unet["variants"]] == ["v0", "v1"]
    assert {v["file"] for v in unet["variants"]} == {"unet.mlpackage"}
    assert unet["bucket_variant"] == [0, 1]
    functions = package_weights(static_fp16 / "unet.mlpackage")
    assert set(functions) == {"v0", "v1"}
    # the base weights are identical in both functions and stored once
    single = unet["variants"][0]["validation"]["size_bytes"]
    assert weight_bytes(static_fp16 / "unet.mlpackage") < 0.75 * 2 * single
    for stage in ("router", "encoder", "unet", "decoder"):
        for v in manifest["stages"][stage]["variants"]:
            w = v["validation"]["weights"]
            assert w["compared"] > 10 and w["mismatched"] == [] and w["max_relative_error"] < 1e-3


def test_package_io_is_checked_against_the_stage_contract(static_fp16: Path) -> None:
    """What the runtime checks when it loads a stage (a swapped package is refused there);
    the spec is readable without a Core ML runtime."""
    import coremltools as ct

    artifact = Artifact(static_fp16)
    for stage, spec in artifact.specs.items():
        for v in artifact.checked.stages[stage].variants:
            package = ct.models.MLModel(
                str(static_fp16 / v.file), skip_model_load=True, function_name=v.function
            )
            spec.check_io(package_signature(package), v.file)
    decoder = ct.models.MLModel(str(static_fp16 / "decoder.mlpackage"), skip_model_load=True)
    with pytest.raises(StageIOError, match="are not the unet stage's"):
        artifact.specs["unet"].check_io(package_signature(decoder), "decoder.mlpackage")


def test_weight_comparison_catches_an_altered_weight(tiny_model: MoRSR, static_fp16: Path) -> None:
    """Judged as the exporter judges an FP16 package: the decoder's conv_out bias, all below
    FP16's smallest normal number, on that number's scale (next test)."""
    package = static_fp16 / "decoder.mlpackage"
    module = StageModule(tiny_model, "decoder", "static")
    assert compare_weights(module, package, 1e-3, FP16_NORMAL)["mismatched"] == []
    altered = copy.deepcopy(tiny_model)  # the shared model stays as shipped
    with torch.no_grad():
        altered.vae.decoder.conv_in.weight[0, 0, 0, 0] += 0.05
    report = compare_weights(StageModule(altered, "decoder", "static"), package, 1e-3, FP16_NORMAL)
    assert any("decoder_conv_in_weight" in m for m in report["mismatched"])


def test_weights_below_the_fp16_normal_range_are_judged_on_its_scale() -> None:
    """A tensor whose every value is below FP16's smallest normal number (the built-in UNet has
    norm biases and adapter B matrices near zero, max 8e-6 to 4e-5): its FP16 rounding is large
    against its own maximum, small against that number, and a real change is still caught."""
    ref = np.random.default_rng(0).uniform(-1e-5, 1e-5, 256).astype(np.float32)
    stored = ref.astype(np.float16).astype(np.float32)
    assert relative_error(stored, ref, 1e-12) > 1e-3  # as judged before: a false mismatch
    assert relative_error(stored, ref, FP16_NORMAL) < 1e-3
    altered = stored.copy()
    altered[0] += 1e-6  # a change of 1.6% of FP16_NORMAL
    assert relative_error(altered, ref, FP16_NORMAL) > 1e-3


def test_cli_export_dynamic_w8_flags_routing_ops_and_shrinks_weights(
    tiny_model: MoRSR, tmp_path: Path
) -> None:
    """The CLI path on this machine (validation printed, parity skipped off macOS): dynamic
    routing is one function whose routing ops are flagged, with W8 weights."""
    out = tmp_path / "w8"
    args = ["export", "--target", "coreml", "--routing", "dynamic", "--precision", "w8", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "validation (w8" in result.output and "not on Neural Engine" in result.output
    if not ON_MACOS:
        assert "parity and bench skipped" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    unet = manifest["stages"]["unet"]
    assert [t["name"] for t in unet["inputs"]] == ["latent", "s"] and len(unet["variants"]) == 1
    ops = unet["variants"][0]["validation"]["ops"]
    assert {"topk"} <= set(ops["not_on_neural_engine"])
    assert ops["counts"]["conv"] > 10
    w = unet["variants"][0]["validation"]["weights"]
    assert w["mismatched"] == [] and 1e-4 < w["max_relative_error"] <= 1 / 127
    fp16_bytes = 2 * sum(p.numel() for p in tiny_model.unet.parameters())  # with its adapters
    # tensors under coremltools' 2048-element threshold (biases, norms, most LoRA factors)
    # stay fp16, so W8 is not half of FP16 on this tiny model; the sd21 figure is in the README
    assert weight_bytes(out / "unet.mlpackage") <= W8_RATIO_BOUND * fp16_bytes


@pytest.mark.skipif(ON_MACOS, reason="checks the error raised where Core ML cannot run")
def test_prediction_paths_raise_the_documented_error(
    tiny_model: MoRSR, static_fp16: Path, tmp_path: Path
) -> None:
    with pytest.raises(CoreMLUnavailable, match="only on macOS"):
        load_runtime(static_fp16)
    with pytest.raises(CoreMLUnavailable, match="W8A8 activation calibration"):
        export(tiny_model, tmp_path / "w8a8", target="coreml", precision="w8a8", progress=False)
    assert not (tmp_path / "w8a8").exists()
    result = CliRunner().invoke(main, ["parity", str(static_fp16)])
    assert result.exit_code == 1 and "only on macOS" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(not ON_MACOS, reason="Core ML prediction exists only on macOS")
def test_parity_on_macos(tiny_model: MoRSR, static_fp16: Path) -> None:
    report = run_parity(load_runtime(static_fp16), tiny_model, samples=2)
    assert report["passed"], report["failures"]


def test_sliced_bucket_equals_the_bucketed_reference(tiny_model: MoRSR) -> None:
    """Shared ranks merged into the base, selected experts as a sliced branch: the function a
    static Core ML bucket computes is the reference routed on that bucket's centre."""
    from mor_edge.export.routing_plan import sliced

    buckets = Buckets.grid(2, 4)
    lr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    weight = tiny_model.unet.conv_in.base.weight.detach().clone()
    with torch.no_grad():
        _, z_ref, x0_ref, _ = tiny_model.run_stages(lr, buckets.centres[5:6], buckets)
        with sliced(tiny_model.layers(), buckets.centres[5]):
            z = tiny_model.encode(tiny_model.upsample(lr), None)
            x0 = tiny_model.denoise(z_ref, None)
    torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x0, x0_ref, rtol=1e-4, atol=1e-3)
    assert torch.equal(tiny_model.unet.conv_in.base.weight, weight)  # restored exactly
