"""Which tile size and batch make a photo fastest: the measurement behind the export's 64x64,
batch-1 tiles.

The built-in model's three image stages (encoder, UNet, decoder; adapters off, which static
routing matches within 1-2%) are exported by the ONNX target at each tile size, and at each
batch of tiles (a fixed batch dimension), then timed on each `--engines` (CPU, `--threads`,
as the runtime adapters run them: ONNX Runtime, and OpenVINO compiling the same graphs with
bfloat16 inference precision, the default engine's setting on CPUs with bf16) in alternating
rounds, so that a noisy machine slows every shape alike. Both engines run the ONNX target's
graphs (GroupNorm as exported; the OpenVINO target writes it as reductions: see the README).
A photo's time is the tiles the tiler places (`mor_edge.tiling.positions`, the CLI's default
overlap of tile/8) times the time per tile.

    python benchmarks/tile_shape.py --out benchmarks/results/tile_shape.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mor_edge.model import MoRSR

PHOTOS = {"512x384": (384, 512), "1 MP (1152x864)": (864, 1152)}
OUTPUT_OF = {"encoder": "latent", "unet": "x0", "decoder": "image"}


def tile_count(shape: tuple[int, int], tile: int) -> int:
    from mor_edge.tiling import positions

    return math.prod(len(positions(side, tile, tile // 8)) for side in shape)


def export_shape(model: MoRSR, folder: Path, tile: int, batch: int) -> dict[str, Path]:
    """The three image stages of `model` for `batch` tiles of `tile` LR pixels."""
    from mor_edge.export.onnx_export import OnnxTarget
    from mor_edge.export.stages import StageModule
    from mor_edge.resize import bicubic_as_matmul
    from mor_edge.stage_contract import stage_specs

    model.config = dataclasses.replace(model.config, lr_size=tile)
    specs = stage_specs(model.config, "base", batch)
    paths = {}
    for stage in OUTPUT_OF:
        paths[stage] = folder / f"{stage}-{tile}-b{batch}.onnx"
        with bicubic_as_matmul():
            OnnxTarget().export_stage(StageModule(model, stage, "base"), specs[stage], paths[stage])
    return paths


ENGINES = ("onnxruntime", "openvino-bf16")
Stage = Callable[[dict[str, np.ndarray]], np.ndarray]


def load_stage(path: Path, engine: str, threads: int) -> tuple[list[str], Stage]:
    """A stage file as (its input names, a call from named inputs to its output)."""
    if engine == "onnxruntime":
        import onnxruntime as ort

        from mor_edge.runtimes.ort_runtime import session_options

        providers = ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
        return [i.name for i in session.get_inputs()], lambda feed: session.run(None, feed)[0]
    from mor_edge.runtimes.openvino_runtime import compile_config, cpu_has_bf16, model_signature, ov

    core = ov.Core()
    if not cpu_has_bf16(core):
        raise SystemExit("openvino-bf16: this CPU has no bfloat16 (OpenVINO would run f32)")
    compiled = core.compile_model(str(path), "CPU", compile_config(threads, "bf16"))
    names = [name for name, _, _ in model_signature(compiled)[0]]
    return names, lambda feed: np.asarray(compiled(feed)[compiled.outputs[0]])


class Pipeline:
    """One shape's three stages on one engine, run back to back on random tiles."""

    def __init__(self, paths: dict[str, Path], tile: int, batch: int, engine: str, threads: int) -> None:
        self.stages = {stage: load_stage(path, engine, threads) for stage, path in paths.items()}
        self.lr = np.random.default_rng(0).random((batch, 3, tile, tile), dtype=np.float32)

    def run(self) -> float:
        start = time.perf_counter()
        values = {"lr": self.lr}
        for stage, (inputs, call) in self.stages.items():
            values[OUTPUT_OF[stage]] = call({name: values[name] for name in inputs})
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="32,48,64,80,96,128")
    parser.add_argument("--batches", default="1,2,4", help="batches measured at 64x64 tiles")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"of {', '.join(ENGINES)}")
    parser.add_argument("--out", default="benchmarks/results/tile_shape.json")
    args = parser.parse_args()
    shapes = [(int(t), 1) for t in args.tiles.split(",")]
    shapes += [(64, int(b)) for b in args.batches.split(",") if int(b) != 1]
    engines = args.engines.split(",")
    if set(engines) - set(ENGINES):
        raise SystemExit(f"--engines: of {', '.join(ENGINES)}")
    from mor_edge.builtin import builtin_model

    model = builtin_model().eval()
    with tempfile.TemporaryDirectory() as tmp:
        files = {shape: export_shape(model, Path(tmp), *shape) for shape in shapes}
        pipelines = {
            (engine, *shape): Pipeline(files[shape], *shape, engine, args.threads)
            for engine in engines
            for shape in shapes
        }
        times: dict[tuple[str, int, int], list[float]] = {key: [] for key in pipelines}
        for pipeline in pipelines.values():  # warm-up
            pipeline.run()
        for _ in range(args.runs):
            for key, pipeline in pipelines.items():
                times[key].append(pipeline.run())
    rows: list[dict[str, Any]] = []
    for (engine, tile, batch), runs in times.items():
        per_tile = statistics.median(runs) / batch
        rows.append(
            {
                "engine": engine,
                "tile": tile,
                "batch": batch,
                "ms_per_call": statistics.median(runs) * 1000,
                "ms_per_tile": per_tile * 1000,
                "us_per_lr_pixel": per_tile / tile**2 * 1e6,
                "photo_seconds": {name: tile_count(shape, tile) * per_tile for name, shape in PHOTOS.items()},
                "photo_tiles": {name: tile_count(shape, tile) for name, shape in PHOTOS.items()},
            }
        )
        photo = ", ".join(f"{k} {v:.1f} s" for k, v in rows[-1]["photo_seconds"].items())
        pixel = rows[-1]["us_per_lr_pixel"]
        label = f"{engine} tile {tile} batch {batch}"
        print(f"{label}: {per_tile * 1000:.1f} ms/tile, {pixel:.1f} us/LR px; {photo}")
    result = {"threads": args.threads, "runs": args.runs, "overlap": "tile/8", "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
