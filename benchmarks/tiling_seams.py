"""Seams: tiled against untiled output of the reference, per-tile vs whole-image GroupNorm.

    python benchmarks/tiling_seams.py [--model DIR] [--norms tile,whole] [--out FILE]

Crops of the held-out photos (LR sizes that need several tiles, small enough to run untiled),
tile 64 with overlaps 8 and 16, tile 96 / overlap 24; PSNR of the tiled output against the untiled
one, and the wall time of each tiled run (one run each, this machine's threads).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mor_edge.builtin import load_model
from mor_edge.image_io import LoadedImage
from mor_edge.photos import photos
from mor_edge.reference_engine import ReferenceEngine
from mor_edge.tiling import collect, router_input, upscale_tiled

CROPS = {  # name: (photo, rows, cols) at 1/4 scale
    "motorcycle 80x120": ("motorcycle", slice(100, 420, 4), slice(100, 580, 4)),
    "motorcycle 96x96": ("motorcycle", slice(100, 484, 4), slice(100, 484, 4)),
    "china 100x150": ("china", slice(20, 420, 4), slice(20, 620, 4)),
    "china 104x128": ("china", slice(0, 416, 4), slice(100, 612, 4)),
}
SETTINGS = ((64, 8), (64, 16), (96, 24))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--norms", default="tile,whole", help="GroupNorm modes, comma-separated")
    parser.add_argument("--out", default="benchmarks/results/tiling_seams.json")
    args = parser.parse_args()
    norms = args.norms.split(",")
    model = load_model(args.model)
    held_out = photos("eval")
    rows: list[dict[str, Any]] = []
    for name, (photo, ys, xs) in CROPS.items():
        img = LoadedImage(rgb=np.ascontiguousarray(held_out[photo][ys, xs]), alpha=None, path=Path(name))
        s = ReferenceEngine(model).route(router_input(img, model.estimator.image_size))
        with torch.no_grad():
            untiled = (
                model(torch.from_numpy(img.array()), s=torch.from_numpy(s))[0].numpy().transpose(1, 2, 0)
            )
        for tile, overlap in SETTINGS:
            if tile >= max(img.height, img.width):
                continue  # one tile: nothing to compare
            for norm in norms:
                engine = ReferenceEngine(model, whole_image_norm=norm == "whole")
                start = time.perf_counter()
                tiled = collect(upscale_tiled(img, engine, tile=tile, overlap=overlap, progress=False))
                seconds = time.perf_counter() - start
                psnr = 10 * math.log10(1 / float(np.mean((tiled - untiled) ** 2)))
                row = {
                    "image": name,
                    "tile": tile,
                    "overlap": overlap,
                    "norm": norm,
                    "psnr_db": psnr,
                    "seconds": seconds,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {}
    for tile, overlap in SETTINGS:
        for norm in norms:
            mine = [r for r in rows if (r["norm"], r["tile"], r["overlap"]) == (norm, tile, overlap)]
            summary[f"{norm} tile {tile} overlap {overlap}"] = {
                "min_psnr_db": min(r["psnr_db"] for r in mine),
                "median_seconds": float(np.median([r["seconds"] for r in mine])),
            }
    Path(args.out).write_text(
        json.dumps(
            {
                "model": model.config.label,
                "threads": torch.get_num_threads(),
                "rows": rows,
                "summary": summary,
            },
            indent=2,
        )
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
