"""Which runtime runs the distillation teacher (Real-ESRGAN x4plus, 73.4 GMAC per 64x64 LR
input) fastest on this CPU: PyTorch FP32 (NCHW and channels-last), PyTorch bfloat16
autocast, ONNX Runtime FP32, OpenVINO FP32 and bfloat16, on the same batch, with each one's
largest difference from PyTorch FP32 and its PSNR against it. The teacher pool runs PyTorch
FP32 (channels-last), the reference itself; the results say what a faster pool would cost.

    python benchmarks/teacher_runtimes.py [--batch 4] [--size 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up (graph compilation, allocations)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    from mor_edge.runtimes.latency import machine
    from mor_edge.teacher import load_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="benchmarks/results/teacher_runtimes.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = load_teacher()
    g = torch.Generator().manual_seed(0)
    from skimage import data

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    x = torch.stack(
        [photo[:, i * args.size : (i + 1) * args.size, 100 : 100 + args.size] for i in range(args.batch)]
    )
    x = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        reference = net(x).numpy()
    results: dict[str, dict[str, float]] = {}

    def record(name: str, fn: Callable[[], np.ndarray]) -> None:
        seconds = median_seconds(fn, args.runs)
        diff = fn() - reference
        mse = float(np.mean(diff**2))
        results[name] = {
            "seconds_per_input": round(seconds / args.batch, 4),
            "max_abs_vs_fp32": float(np.abs(diff).max()),
            "psnr_vs_fp32_db": round(10 * math.log10(1 / mse), 2) if mse else math.inf,
        }
        print(name, results[name], flush=True)

    cl = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        record("pytorch fp32 channels-last", lambda: cl(xc).numpy())

        def bf16() -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return cl(xc).float().numpy()

        record("pytorch bf16 autocast", bf16)
        net = net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        record("pytorch fp32", lambda: net(x).numpy())
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "teacher.onnx"
        torch.onnx.export(
            net,
            (x,),
            str(onnx_path),
            dynamo=False,
            opset_version=17,
            input_names=["lr"],
            output_names=["sr"],
            dynamic_axes={"lr": {0: "n", 2: "h", 3: "w"}, "sr": {0: "n", 2: "H", 3: "W"}},
        )
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        record("onnxruntime fp32", lambda: session.run(None, {"lr": x.numpy()})[0])
        import openvino as ov

        core = ov.Core()
        for hint in ("f32", "bf16"):
            config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": args.threads}
            compiled = core.compile_model(str(onnx_path), "CPU", config)

            def infer(c: Any = compiled) -> np.ndarray:
                return np.asarray(c(x.numpy())[0])

            record(f"openvino {hint}", infer)
    out = {"machine": machine(), "batch": args.batch, "lr_size": args.size, "threads": args.threads}
    Path(args.results).write_text(json.dumps({**out, "runtimes": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
