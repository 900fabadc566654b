"""What a user waits for: `mor-edge upscale` of a 512x384 photo (x4 to 2048x1536), end to end.

    python benchmarks/upscale_speed.py [--runs 3] [--artifact DIR ...] [--out FILE]

Each engine runs the real command in a fresh process (start-up, routing, tiles, PNG writing),
`--runs` times; the median wall time is kept. Engines: the default (the cached export of the
built-in model: its first run, which makes the export, is reported apart), the ONNX Runtime
FP32 export where the default is another (`MOR_EDGE_ENGINE=onnxruntime`), `--reference`, and
each `--artifact` given. Also reported: seconds per output megapixel, the tiles run, the
pipeline's MACs per tile (attention included) and the GFLOP/s that makes, against this CPU's
FP32 GEMM rate measured here with the same threads.
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

from mor_edge.builtin import load_model
from mor_edge.engine_cache import ONNX_FP32, engine_kinds
from mor_edge.model import MoRSR
from mor_edge.tiling import positions

WIDTH, HEIGHT = 512, 384


def photo(folder: Path) -> Path:
    path = folder / "photo_512x384.png"
    Image.fromarray(data.astronaut()).resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS).save(path)
    return path


def photo_record(width: int, height: int, tile: int) -> dict[str, Any]:
    """The photo, the tile and the tiles the tiler places at the CLI's default overlap."""
    tiles = len(positions(height, tile, tile // 8)) * len(positions(width, tile, tile // 8))
    mp = width * height * 16 / 1e6
    return {
        "photo": f"{width}x{height} -> {width * 4}x{height * 4} ({mp:.2f} MP out)",
        "tile": tile,
        "overlap": tile // 8,
        "tiles": tiles,
    }


def pipeline_macs(model: MoRSR, tile: int, adapters: bool = True) -> float:
    """MACs of one tile through the model (attention counted: the math kernel). The reference
    runs the adapters' ranks densely; an export folds its bucket's experts into the weights,
    which costs what the model without adapters costs."""
    lr = torch.rand(1, 3, tile, tile)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(lr, adapters=adapters)
    return counter.get_total_flops() / 2


def gemm_gflops(threads: int) -> float:
    """Sustained FP32 GEMM rate (2048^3, median of 5) with `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    a @ b
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, done.stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--artifact", action="append", default=[])
    parser.add_argument("--out", default="benchmarks/results/upscale_speed.json")
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("mor-edge"))
    threads = len(os.sched_getaffinity(0))
    model = load_model(None)
    tile = model.config.lr_size
    record = photo_record(WIDTH, HEIGHT, tile)
    tiles = record["tiles"]
    macs = {"export": pipeline_macs(model, tile, adapters=False), "reference": pipeline_macs(model, tile)}
    peak = gemm_gflops(threads)
    out_mp = WIDTH * HEIGHT * 16 / 1e6
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        src = photo(Path(tmp))
        env = {**os.environ, "MOR_EDGE_CACHE": str(Path(tmp) / "cache")}
        env.pop("MOR_EDGE_ENGINE", None)
        first, engine = timed([exe, "upscale", str(src), str(Path(tmp) / "first.png")], env)
        rows.append(
            {"engine": "default, first run (makes the cached export)", "seconds": first, "ran": engine}
        )
        engines: list[tuple[str, list[str], dict[str, str]]] = [("default (cached export)", [], {})]
        if engine_kinds()[0] != ONNX_FP32:  # OpenVINO bf16 here: ONNX Runtime FP32 beside it
            ort = {"MOR_EDGE_ENGINE": "onnxruntime"}
            timed([exe, "upscale", str(src), str(Path(tmp) / "first.png")], {**env, **ort})  # makes it
            engines.append(("MOR_EDGE_ENGINE=onnxruntime (cached export)", [], ort))
        engines.append(("--reference", ["--reference"], {}))
        engines += [(f"--artifact {a}", ["--artifact", a], {}) for a in args.artifact]
        for name, extra, more_env in engines:
            kind = "reference" if "--reference" in extra else "export"
            runs = [
                timed([exe, "upscale", str(src), str(Path(tmp) / "out.png"), *extra], {**env, **more_env})
                for _ in range(args.runs)
            ]
            seconds = statistics.median(t for t, _ in runs)
            rows.append(
                {
                    "engine": name,
                    "seconds": seconds,
                    "runs": [t for t, _ in runs],
                    "ran": runs[-1][1],
                    "seconds_per_output_mp": seconds / out_mp,
                    "gflops": 2 * macs[kind] * tiles / seconds / 1e9,
                }
            )
    result = {
        **record,
        "gmac_per_tile": {engine: m / 1e9 for engine, m in macs.items()},
        "threads": threads,
        "gemm_fp32_gflops": peak,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    gmac = macs["export"] / 1e9
    print(f"{result['photo']}: {tiles} tiles of {tile}, {gmac:.2f} GMAC each; GEMM {peak:.0f} GFLOP/s")
    for row in rows:
        rate = (
            f"  {row['gflops']:.0f} GFLOP/s ({row['gflops'] / peak:.0%} of GEMM)" if "gflops" in row else ""
        )
        print(f"{row['engine']:<48} {row['seconds']:6.1f} s{rate}")


if __name__ == "__main__":
    main()
