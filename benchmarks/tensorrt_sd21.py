"""The sd21-architecture UNet (random weights, one static bucket's experts folded in) through
the TensorRT target on this CPU: FP16 (AutoCast) and INT8 (ModelOpt Q/DQ) ONNX, with the time
each takes, what the graphs hold, and their PSNR against the FP32 graph on ONNX Runtime.

    python benchmarks/tensorrt_sd21.py [--samples 4] [--precisions fp16 int8] [--out FILE]

Measured on this 24 GB, 2-core machine, it does not complete: ModelOpt's CPU passes over the
3.5 GB UNet were killed by the out-of-memory killer at 24 GB resident (INT8 calibration, with
and without `calibrate_per_node`; AutoCast, which keeps every intermediate tensor), and the
explicit-cast FP16 graph the target uses beyond 2 GiB of weights had not finished tracing
after 13 minutes (PyTorch runs half precision slowly on this CPU). Run it on a bigger host.

No TensorRT here: the engines these graphs build into, and their latency, need the device.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
import torch


def graph_stats(path: Path) -> dict[str, Any]:
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    dtypes = collections.Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in graph.initializer)
    return {
        "nodes": len(graph.node),
        "quantize_linear": ops["QuantizeLinear"],
        "cast": ops["Cast"],
        "initializer_dtypes": dict(dtypes),
    }


def run(samples_count: int, precisions: list[str]) -> dict[str, Any]:
    from mor_edge.builtin import random_model
    from mor_edge.config import sd21_config
    from mor_edge.data import degraded_pairs
    from mor_edge.evaluation import psnr
    from mor_edge.export.onnx_export import OnnxTarget
    from mor_edge.export.stages import StageModule
    from mor_edge.export.tensorrt_export import TensorRTTarget
    from mor_edge.routing import apply_routing, clear_routing
    from mor_edge.stage_contract import stage_specs

    model = random_model(sd21_config(label="random sd21"), seed=0).eval()
    spec = stage_specs(model.config, "base")["unet"]
    pairs = degraded_pairs(model.config.sr_size, samples_count, seed=0, subset="train")
    with torch.no_grad():
        s = model.route(pairs.lr)
        samples = [
            {"latent": model.encode(model.upsample(pairs.lr[i : i + 1]), s[i : i + 1]).numpy()}
            for i in range(samples_count)
        ]
    layers = model.unet_layers()  # one static bucket: its experts folded into the weights
    apply_routing(layers, torch.full((1, s.shape[1]), 0.5))
    weights = {n: layer.rank_weights[0] for n, layer in layers.items() if layer.rank_weights is not None}
    clear_routing(layers)
    for name, layer in layers.items():
        layer.merge(weights[name])
    module = StageModule(model, "unet", "base")
    out: dict[str, Any] = {"calibration_samples": samples_count, "machine": platform.processor() or "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "unet.fp32.onnx"
        t0 = time.perf_counter()
        OnnxTarget().export_stage(module, spec, source)
        out["fp32_export_s"] = time.perf_counter() - t0
        reference = OnnxTarget().runner(source)
        want = [reference(x) for x in samples]
        del reference  # its session holds the FP32 weights
        target = TensorRTTarget()
        for precision in precisions:
            path = root / f"unet.{precision}.onnx"
            t0 = time.perf_counter()
            if precision == "int8":
                target.quantize_stage(source, path, samples, float_nodes=set())
            else:
                target.export_stage(module, spec, path, "fp16")  # the explicit-cast graph at this size
            seconds = time.perf_counter() - t0
            target.finish(path, spec)
            got = target.runner(path)
            out[precision] = {
                "prepare_s": seconds,
                "psnr_vs_fp32_db": min(psnr(w, got(x)) for w, x in zip(want, samples, strict=True)),
                **graph_stats(path),
            }
            print(precision, json.dumps(out[precision]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--precisions", nargs="+", default=["fp16", "int8"], choices=["fp16", "int8"])
    parser.add_argument("--out", default="benchmarks/results/tensorrt_sd21.json")
    args = parser.parse_args()
    result = run(args.samples, args.precisions)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
