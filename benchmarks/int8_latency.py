"""INT8 against float on ONNX Runtime and OpenVINO: latency, parity and quality, one run.

tiny: the built-in model exported with the CLI defaults (static, 16 buckets; int8 with a
64-sample calibration set) for each target and precision; every artifact gets `run_parity`
(PSNR against the FP32 reference, PSNR-Y against HR on the evaluation photos) and
`run_bench` (per stage and end to end, median of `--runs`).

sd21: the UNet stage alone at 512x512 output (64x64 latents) with seeded random weights
("random weights are fine for speed"): float IR, and NNCF INT8 calibrated on latents the
reference encoder made from degraded photos; OpenVINO only (ORT's calibrator holds every
activation of a 3.4 GB graph in memory).

    python benchmarks/int8_latency.py --presets tiny sd21 --out benchmarks/results/int8_latency.json
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TINY = [
    ("onnx", "fp32"),
    ("onnx", "int8"),
    ("openvino", "fp32"),
    ("openvino", "fp16"),
    ("openvino", "w8"),
    ("openvino", "int8"),
]


def tiny(root: Path, runs: int) -> dict[str, Any]:
    from mor_edge.builtin import load_model
    from mor_edge.calib.sampling import build_calibration_set
    from mor_edge.export.exporter import export
    from mor_edge.runtimes.latency import run_bench
    from mor_edge.runtimes.parity import run_parity
    from mor_edge.runtimes.registry import load_runtime

    model = load_model(None)
    calibration = build_calibration_set(model, 64, routings=("static",), progress=False)
    results = {}
    for target, precision in TINY:
        t0 = time.perf_counter()
        folder = export(
            model,
            root / f"{target}-{precision}",
            target=target,
            precision=precision,
            calibration=calibration if precision == "int8" else None,
            progress=False,
        )
        export_s = time.perf_counter() - t0
        runtime = load_runtime(folder)
        parity = run_parity(runtime, model)
        bench = run_bench(runtime, warmup=3, runs=runs, progress=False)
        results[f"{target}-{precision}"] = {
            "export_s": export_s,
            "passed": parity["passed"],
            "psnr_db": {k: parity[k]["psnr_db"] for k in ("encoder", "unet", "decoder", "end_to_end")},
            "hr_psnr_y_db": parity["hr_psnr_y_db"],
            "hr_psnr_delta_db": parity["hr_psnr_delta_db"],
            "latency_ms": {k: v["median_ms"] for k, v in bench["stages"].items()},
            "end_to_end_ms": bench["end_to_end"]["median_ms"],
            "end_to_end_p90_ms": bench["end_to_end"]["p90_ms"],
        }
        print(target, precision, json.dumps(results[f"{target}-{precision}"]), flush=True)
    for target in ("onnx", "openvino"):
        f, q = results[f"{target}-fp32"], results[f"{target}-int8"]
        results[f"{target}-int8-speedup"] = {
            "end_to_end": f["end_to_end_ms"] / q["end_to_end_ms"],
            **{k: f["latency_ms"][k] / q["latency_ms"][k] for k in f["latency_ms"]},
        }
    return results


def sd21_unet(root: Path, runs: int, calibration_samples: int) -> dict[str, Any]:
    import openvino as ov

    from mor_edge.builtin import random_model
    from mor_edge.config import sd21_config
    from mor_edge.data import degraded_pairs
    from mor_edge.export.onnx_export import OnnxTarget
    from mor_edge.export.openvino_export import OpenVinoTarget
    from mor_edge.export.stages import StageModule
    from mor_edge.routing import apply_routing, clear_routing
    from mor_edge.runtimes.latency import time_call
    from mor_edge.stage_contract import stage_specs

    model = random_model(sd21_config(label="random sd21"), seed=0).eval()
    spec = stage_specs(model.config, "base")["unet"]
    pairs = degraded_pairs(model.config.sr_size, calibration_samples, seed=0, subset="train")
    with torch.no_grad():
        s = model.route(pairs.lr)
        samples = []
        for i in range(calibration_samples):
            z = model.encode(model.upsample(pairs.lr[i : i + 1]), s[i : i + 1])
            samples.append({"latent": z.numpy()})
    # one fixed expert mask folded in (a static bucket): latency does not depend on which
    layers = model.unet_layers()
    apply_routing(layers, torch.full((1, s.shape[1]), 0.5))
    weights = {n: layer.rank_weights[0] for n, layer in layers.items() if layer.rank_weights is not None}
    clear_routing(layers)
    for name, layer in layers.items():
        layer.merge(weights[name])
    source = root / "unet.onnx"
    t0 = time.perf_counter()
    OnnxTarget().export_stage(StageModule(model, "unet", "base"), spec, source)
    onnx_s = time.perf_counter() - t0
    del model
    target = OpenVinoTarget()
    fp32 = root / "unet.fp32.xml"
    ov.save_model(ov.convert_model(str(source)), str(fp32), compress_to_fp16=False)
    int8 = root / "unet.int8.xml"
    t0 = time.perf_counter()
    target.quantize_stage(source, int8, samples, float_nodes=set())
    quantize_s = time.perf_counter() - t0
    core = ov.Core()
    config = {
        "INFERENCE_NUM_THREADS": 2,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    out: dict[str, Any] = {
        "onnx_export_s": onnx_s,
        "nncf_quantize_s": quantize_s,
        "calibration_samples": calibration_samples,
    }
    for name, path in (("fp32", fp32), ("int8", int8)):
        compiled: Any = core.compile_model(str(path), "CPU", config)
        out[name] = time_call(functools.partial(compiled, samples[0]), warmup=1, runs=runs)
        print("sd21 unet", name, json.dumps(out[name]), flush=True)
    out["int8_speedup"] = out["fp32"]["median_ms"] / out["int8"]["median_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["tiny", "sd21"], choices=["tiny", "sd21"])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sd21-runs", type=int, default=3)
    parser.add_argument("--sd21-calibration", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_latency.json"))
    args = parser.parse_args()
    from mor_edge.runtimes.latency import machine

    # Rows of presets not run this time are kept (a tiny-only rerun must not drop sd21).
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["machine"] = machine()
    with tempfile.TemporaryDirectory() as tmp:
        if "tiny" in args.presets:
            results["tiny"] = tiny(Path(tmp), args.runs)
        if "sd21" in args.presets:
            results["sd21_unet"] = sd21_unet(Path(tmp), args.sd21_runs, args.sd21_calibration)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
