"""Peak memory of tiled upscaling: a 4096x4096 input against a 512x512 one (same artifact,
same tile), each in a fresh process, plus wall time.

    python benchmarks/tiling_memory.py --artifact artifacts/tiny-onnx-static-fp32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys
from mor_edge.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def make_input(path: Path, side: int) -> None:
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.BICUBIC).save(path, quality=92)


def run(args: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    peak = next(int(line.split()[1]) for line in child.stderr.splitlines() if line.startswith("PEAK_RSS_KIB"))
    return peak / 2**20, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides:
            src, dst = Path(tmp) / f"in{side}.jpg", Path(tmp) / f"out{side}.png"
            make_input(src, side)
            peak, seconds = run(["upscale", str(src), str(dst), "--artifact", args.artifact])
            results[side] = {"peak_rss_gib": peak, "seconds": seconds, "output_mb": dst.stat().st_size / 1e6}
            print(side, json.dumps(results[side]), flush=True)
    small, large = results[min(results)], results[max(results)]
    ratio = large["peak_rss_gib"] / small["peak_rss_gib"]
    print(f"peak RSS {max(results)}^2 / {min(results)}^2 input: {ratio:.2f}x")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
