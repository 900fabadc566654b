"""INT8 against float on ONNX Runtime and OpenVINO: latency, parity and quality, one run.

tiny: the built-in model exported with the CLI defaults (static, 16 buckets; int8 with a
64-sample calibration set) for each target and precision; every artifact gets `run_parity`
(PSNR against the FP32 reference, PSNR-Y against HR on the evaluation photos); then every
stage and the end-to-end call of all the artifacts are timed in alternating rounds
(`bench_alternating`), median of `--runs`, so that a slow spell of a shared machine falls on
every artifact alike and the INT8 / FP32 ratios hold.

sd21: the whole pipeline at 512x512 output with seeded random weights ("random weights are
fine for speed"), one static bucket, exported to OpenVINO FP32 and INT8 (NNCF, calibrated on
degraded photos the reference ran); OpenVINO only (ORT's calibrator holds every activation of
a 3.4 GB graph in memory).

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
    from mor_edge.runtimes.latency import bench_alternating
    from mor_edge.runtimes.parity import run_parity
    from mor_edge.runtimes.registry import load_runtime

    model = load_model(None)
    calibration = build_calibration_set(model, 64, routings=("static",), progress=False)
    results: dict[str, Any] = {}
    runtimes = {}
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
        key = f"{target}-{precision}"
        runtimes[key] = load_runtime(folder)
        parity = run_parity(runtimes[key], model)
        results[key] = {
            "export_s": export_s,
            "passed": parity["passed"],
            "psnr_db": {k: parity[k]["psnr_db"] for k in ("encoder", "unet", "decoder", "end_to_end")},
            "hr_psnr_y_db": parity["hr_psnr_y_db"],
            "hr_psnr_delta_db": parity["hr_psnr_delta_db"],
        }
        print(key, json.dumps(results[key]), flush=True)
    for key, bench in bench_alternating(runtimes, warmup=3, runs=runs).items():
        results[key].update(latency_ms=bench["stages"], end_to_end_ms=bench["end_to_end"])
        print(key, json.dumps(bench), flush=True)
    for target in ("onnx", "openvino"):
        f, q = results[f"{target}-fp32"], results[f"{target}-int8"]
        results[f"{target}-int8-speedup"] = {
            "end_to_end": f["end_to_end_ms"] / q["end_to_end_ms"],
            **{k: f["latency_ms"][k] / q["latency_ms"][k] for k in f["latency_ms"]},
        }
    return results


def sd21_pipeline(root: Path, runs: int, calibration_samples: int) -> dict[str, Any]:
    """OpenVINO FP32 and INT8 artifacts of the whole sd21 pipeline (one static bucket: latency
    does not depend on which), exported the way `mor-edge export` does; every stage timed
    with the two artifacts in alternating rounds, and INT8's output against FP32's."""
    from mor_edge.builtin import random_model
    from mor_edge.calib.sampling import build_calibration_set
    from mor_edge.config import sd21_config
    from mor_edge.evaluation import psnr
    from mor_edge.export.exporter import export
    from mor_edge.routing import Buckets
    from mor_edge.runtimes.latency import time_alternating
    from mor_edge.runtimes.registry import load_runtime

    model = random_model(sd21_config(label="random sd21"), seed=0)
    buckets = Buckets.grid(1, len(model.config.prompt_pairs))
    t0 = time.perf_counter()
    calibration = build_calibration_set(
        model, calibration_samples, bucket_levels=1, routings=("static",), progress=False
    )
    out: dict[str, Any] = {
        "calibration_samples": calibration_samples,
        "calibration_s": time.perf_counter() - t0,
    }
    for precision in ("fp32", "int8"):
        t0 = time.perf_counter()
        export(
            model,
            root / f"sd21-{precision}",
            target="openvino",
            precision=precision,
            buckets=buckets,
            calibration=calibration if precision == "int8" else None,
            progress=False,
        )
        out[f"{precision}_export_s"] = time.perf_counter() - t0
    del model
    runtimes = {p: load_runtime(root / f"sd21-{p}") for p in ("fp32", "int8")}
    fp32 = runtimes["fp32"]
    values: dict[str, Any] = {"lr": fp32.specs["router"].dummy_inputs()["lr"]}
    values["s"] = fp32.route(values["lr"])
    for stage, output in (("encoder", "latent"), ("unet", "x0"), ("decoder", "image")):
        calls = {p: functools.partial(r.run_stage, stage, values, 0) for p, r in runtimes.items()}
        median = time_alternating(calls, warmup=1, runs=runs)
        out[stage] = {**median, "int8_speedup": median["fp32"] / median["int8"]}
        values[output] = calls["fp32"]()
        print("sd21", stage, json.dumps(out[stage]), flush=True)
    # FP32's image is the stage chain just run; INT8's runs its own chain end to end
    out["int8_vs_fp32_psnr_db"] = psnr(values["image"], runtimes["int8"].run(values["lr"], values["s"]))
    totals = {p: sum(out[st][p] for st in ("encoder", "unet", "decoder")) for p in runtimes}
    out["image_stages_ms"] = totals
    out["int8_speedup"] = totals["fp32"] / totals["int8"]
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
            results["sd21"] = sd21_pipeline(Path(tmp), args.sd21_runs, args.sd21_calibration)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
