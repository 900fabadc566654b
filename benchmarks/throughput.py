"""A throughput users can plan with: seconds per output megapixel for x4 of a 1-MP photo per
artifact kind, and each stage's achieved GFLOP/s against this CPU's FP32 GEMM rate.

    python benchmarks/throughput.py [--out benchmarks/results/throughput.json]

The built-in model is exported as each kind (static routing with one bucket: a call runs one
bucket's graphs whatever their number; INT8 calibrated on 16 samples). The real `mor-edge
upscale --artifact` runs on a 1152x864 photo in a fresh process (start-up, routing, 336
tiles, PNG writing), `--runs` times with the kinds alternating (median kept); then a fresh
process loads every kind and times their stages in alternating rounds (medians of 15). The
floor is the tiles' MACs (overlap included) at the fastest artifact's own measured rate: the
ratio to it is what tiling, blending and writing add.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from skimage import data
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from upscale_speed import gemm_gflops, photo_record, timed

from mor_edge.builtin import load_model
from mor_edge.calib.sampling import build_calibration_set
from mor_edge.export.exporter import export
from mor_edge.export.routing_plan import default_buckets
from mor_edge.export.stages import StageModule
from mor_edge.model import MoRSR
from mor_edge.routing import clear_routing
from mor_edge.stage_contract import stage_specs

WIDTH, HEIGHT = 1152, 864
KINDS = (("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))
IMAGE_STAGES = ("encoder", "unet", "decoder")


def stage_macs(model: MoRSR) -> dict[str, float]:
    """MACs of one tile through each image stage (attention counted: the math kernel), with
    the adapters off: what an export with a bucket's experts folded into the weights runs."""
    clear_routing(model.layers())
    specs = stage_specs(model.config, "base")
    macs = {}
    for stage in IMAGE_STAGES:
        inputs = [torch.from_numpy(v) for v in specs[stage].dummy_inputs().values()]
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            StageModule(model, stage, "base")(*inputs)
        macs[stage] = counter.get_total_flops() / 2
    return macs


def stage_times(folders: list[str], threads: int, warmup: int = 3, runs: int = 15) -> list[dict[str, float]]:
    """Median ms per image stage of each artifact, all loaded in this process and timed in
    alternating rounds (a stage of each artifact, then the next round)."""
    from mor_edge.runtimes.registry import load_runtime

    runtimes = [load_runtime(folder, threads=threads) for folder in folders]
    feeds = {stage: runtimes[0].specs[stage].dummy_inputs() for stage in IMAGE_STAGES}
    samples: list[dict[str, list[float]]] = [{stage: [] for stage in IMAGE_STAGES} for _ in runtimes]
    for round_ in range(warmup + runs):
        for runtime, times in zip(runtimes, samples, strict=True):
            for stage in IMAGE_STAGES:
                bucket = 0 if stage != "decoder" else None
                start = time.perf_counter()
                runtime.run_stage(stage, feeds[stage], bucket)
                if round_ >= warmup:
                    times[stage].append((time.perf_counter() - start) * 1000)
    return [{stage: statistics.median(t) for stage, t in times.items()} for times in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runs", type=int, default=2, help="upscale runs per kind (median)")
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    parser.add_argument("--stage-times", nargs="+", help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.stage_times:
        print(json.dumps(stage_times(args.stage_times, args.threads)))
        return
    model = load_model(None)
    tile = model.config.lr_size
    record = photo_record(WIDTH, HEIGHT, tile)
    tiles = record["tiles"]
    macs = stage_macs(model)
    peak = gemm_gflops(args.threads)
    out_mp = WIDTH * HEIGHT * 16 / 1e6
    exe = str(Path(sys.executable).with_name("mor-edge"))
    env = dict(os.environ)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "photo.png"
        Image.fromarray(data.astronaut()).resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS).save(src)
        calibration = build_calibration_set(model, 16, bucket_levels=1, routings=("static",), progress=False)
        folders = {
            f"{target} {precision}": export(
                model,
                Path(tmp) / f"{target}-{precision}",
                target=target,
                precision=precision,
                buckets=default_buckets(model, 1),
                calibration=calibration if precision == "int8" else None,
                progress=False,
            )
            for target, precision in KINDS
        }
        runs: dict[str, list[float]] = {kind: [] for kind in folders}
        for _ in range(args.runs):  # kinds alternate, so that a noisy machine slows each alike
            for kind, folder in folders.items():
                seconds, _ = timed(
                    [exe, "upscale", str(src), str(Path(tmp) / "out.png"), "--artifact", str(folder)], env
                )
                runs[kind].append(seconds)
                print(f"{kind:<14} {seconds:6.1f} s", flush=True)
        child = [sys.executable, __file__, "--threads", str(args.threads), "--stage-times"]
        child += [str(folder) for folder in folders.values()]
        done = subprocess.run(child, capture_output=True, text=True, check=True)
        times = json.loads(done.stdout.strip().splitlines()[-1])
        for kind, ms in zip(folders, times, strict=True):
            seconds = statistics.median(runs[kind])
            rows.append(
                {
                    "kind": kind,
                    "seconds": seconds,
                    "runs": runs[kind],
                    "seconds_per_output_mp": seconds / out_mp,
                    "stage_ms": ms,
                    "stage_gflops": {s: 2 * macs[s] / (ms[s] / 1000) / 1e9 for s in IMAGE_STAGES},
                    "tile_ms": sum(ms.values()),
                }
            )
    fastest = min(rows, key=lambda r: r["tile_ms"])
    rate = 2 * sum(macs.values()) / (fastest["tile_ms"] / 1000)  # FLOP/s, the fastest artifact's
    floor = tiles * 2 * sum(macs.values()) / rate
    for row in rows:
        row["floor_ratio"] = row["seconds"] / floor
    result = {
        **record,
        "stage_gmac_per_tile": {s: m / 1e9 for s, m in macs.items()},
        "threads": args.threads,
        "gemm_fp32_gflops": peak,
        "floor": {"seconds": floor, "rate_of": fastest["kind"], "gflops": rate / 1e9},
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    gmac = sum(macs.values()) / 1e9
    print(f"{tiles} tiles, {gmac:.2f} GMAC each; GEMM {peak:.0f} GFLOP/s; floor {floor:.1f} s")
    for row in rows:
        rates = ", ".join(f"{s} {g:.0f}" for s, g in row["stage_gflops"].items())
        print(f"{row['kind']:<14} {row['floor_ratio']:.2f}x floor; GFLOP/s {rates}")


if __name__ == "__main__":
    main()
