"""Latency of MoR routing modes on ONNX Runtime (or OpenVINO) against the no-adapter base and
PyTorch eager.

For each preset (tiny: the built-in model; sd21: SD 2.1-base architecture at 512x512 output
with seeded random weights) it exports (a) base without adapters, (b) MoR static (one bucket:
latency does not depend on which), (c) MoR dynamic, each in a fresh process whose peak RSS is
recorded, then times every stage on ONNX Runtime and in PyTorch eager, all in this one run.
For tiny every mode's stages are timed in alternating rounds (`bench_alternating`), so that a
slow spell of a shared machine falls on all modes alike; sd21's artifacts (a 3.5 GB UNet
each) are timed one mode after another, each deleted before the next is exported.

    python benchmarks/onnx_latency.py --presets tiny sd21 --out benchmarks/results/onnx_latency.json

`--target openvino` times the same modes as OpenVINO IR (FP32, or `--precision bf16`): the
runtimes differ in what in-graph routing costs (ONNX Runtime gives its blocked convolution
layout only to constant weights; the `fold` form's weights are computed per image).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

MODES = {
    "base": {"routing": "base"},
    "static": {"routing": "static"},
    "dynamic": {"routing": "dynamic", "dynamic_form": "fold"},
    "dynamic_gather": {"routing": "dynamic", "dynamic_form": "gather"},
}


def build(preset: str) -> Any:
    from mor_edge.builtin import load_model, random_model
    from mor_edge.config import sd21_config

    return load_model(None) if preset == "tiny" else random_model(sd21_config(label="random sd21"), seed=0)


def export_child(preset: str, mode: str, out: str, target: str, precision: str) -> None:
    """Runs in a fresh process: export one artifact and print its peak RSS."""
    from mor_edge.export.exporter import export
    from mor_edge.routing import Buckets

    model = build(preset)
    options = {**MODES[mode], "target": target, "precision": precision}
    buckets = Buckets(torch.full((1, len(model.config.prompt_pairs)), 0.5)) if mode == "static" else None
    t0 = time.perf_counter()
    export(model, out, buckets=buckets, progress=False, **options)  # type: ignore[arg-type]
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"export_s": time.perf_counter() - t0, "peak_rss_gib": peak_gib}))


@torch.no_grad()
def eager(preset: str, warmup: int, runs: int) -> dict[str, dict[str, float]]:
    from mor_edge.runtimes.latency import time_call

    model = build(preset)
    c = model.config
    lr = torch.rand(1, 3, c.lr_size, c.lr_size, generator=torch.Generator().manual_seed(0))
    s = model.route(lr)
    up = model.upsample(lr)
    z = model.encode(up, s)
    x0 = model.denoise(z, s)
    return {
        "router": time_call(lambda: model.route(lr), warmup, runs),
        "encoder": time_call(lambda: model.encode(model.upsample(lr), s), warmup, runs),
        "unet": time_call(lambda: model.denoise(z, s), warmup, runs),
        "decoder": time_call(lambda: model.decode(x0, lr), warmup, runs),
        "end_to_end": time_call(lambda: model(lr), warmup, runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["tiny", "sd21"], choices=["tiny", "sd21"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--warmup", type=int, default=None, help="default: 3 (tiny), 1 (sd21)")
    parser.add_argument("--runs", type=int, default=None, help="default: 15 (tiny), 3 (sd21)")
    parser.add_argument("--target", default="onnx", choices=["onnx", "openvino"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: openvino only")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="where artifacts go (default: a temp dir)")
    child_metavar = ("PRESET", "MODE", "OUT", "TARGET", "PRECISION")
    parser.add_argument("--export-child", nargs=5, metavar=child_metavar, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precision == "bf16" and args.target != "openvino":
        parser.error("--precision bf16 needs --target openvino")
    if args.export_child:
        export_child(*args.export_child)
        return

    from mor_edge.runtimes.latency import bench_alternating, machine, run_bench
    from mor_edge.runtimes.registry import load_runtime

    torch.set_num_threads(torch.get_num_threads())
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mor-bench-"))
    results: dict[str, Any] = {
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "target": args.target,
        "precision": args.precision,
        "presets": {},
    }
    for preset in args.presets:
        warmup = args.warmup if args.warmup is not None else (3 if preset == "tiny" else 1)
        runs = args.runs if args.runs is not None else (15 if preset == "tiny" else 3)
        alternate = preset == "tiny"  # sd21: one 3.5 GB UNet in memory at a time
        entry: dict[str, Any] = {"warmup": warmup, "runs": runs, "alternating": alternate, "modes": {}}
        runtimes: dict[str, Any] = {}
        for mode in args.modes:
            out = workdir / f"{preset}-{mode}"
            shutil.rmtree(out, ignore_errors=True)
            child_args = [preset, mode, str(out), args.target, args.precision]
            cmd = [sys.executable, __file__, "--export-child", *child_args]
            child = subprocess.run(cmd, check=True, capture_output=True, text=True)
            export_info = json.loads(child.stdout.strip().splitlines()[-1])
            size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
            entry["modes"][mode] = {**export_info, "artifact_mb": size_mb}
            if alternate:
                runtimes[mode] = load_runtime(out)
                continue
            bench = run_bench(load_runtime(out), warmup=warmup, runs=runs, progress=False)
            entry["modes"][mode]["stages"] = {k: v["median_ms"] for k, v in bench["stages"].items()}
            entry["modes"][mode]["end_to_end"] = bench["end_to_end"]["median_ms"]
            print(preset, mode, json.dumps(entry["modes"][mode]), flush=True)
            shutil.rmtree(out)
        if alternate:  # every mode's every call in turn, so a slow spell falls on all of them
            for mode, bench in bench_alternating(runtimes, warmup, runs).items():
                entry["modes"][mode].update(bench)
                print(preset, mode, json.dumps(entry["modes"][mode]), flush=True)
            runtimes.clear()
        entry["eager"] = {k: v["median_ms"] for k, v in eager(preset, warmup, runs).items()}
        print(preset, "eager", json.dumps(entry["eager"]), flush=True)
        results["presets"][preset] = entry
    print_table(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: dict[str, Any]) -> None:
    for preset, entry in results["presets"].items():
        modes = entry["modes"]
        runtime = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}[results.get("target", "onnx")]
        precision = results.get("precision", "fp32").upper()
        print(f"\n{preset}: {runtime} {precision} median ms ({entry['runs']} runs), ratios against base")
        header = f"{'stage':<11}{'eager':>10}" + "".join(f"{m:>16}" for m in modes)
        print(header)
        for stage in ("router", "encoder", "unet", "decoder", "end_to_end"):
            base = modes.get("base", {}).get("stages", {}).get(stage) or modes.get("base", {}).get(
                "end_to_end"
            )
            row = f"{stage:<11}{entry['eager'][stage]:>10.1f}"
            for info in modes.values():
                value = info["end_to_end"] if stage == "end_to_end" else info["stages"][stage]
                ratio = f" ({value / base:.2f}x)" if base and stage != "router" else ""
                row += f"{value:>9.1f}{ratio:>7}"
            print(row)
        base_modes = modes.get("base")
        if base_modes:
            eager_ratio = {
                s: entry["eager"][s] / base_modes["stages"][s]
                for s in ("router", "encoder", "unet", "decoder")
            }
            print("eager / base per stage: " + ", ".join(f"{s} {r:.2f}x" for s, r in eager_ratio.items()))
        for mode, info in modes.items():
            print(
                f"export {mode}: {info['export_s']:.0f} s, peak RSS {info['peak_rss_gib']:.2f} GiB, "
                f"{info['artifact_mb']:.0f} MB"
            )


if __name__ == "__main__":
    main()
