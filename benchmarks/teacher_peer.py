"""The teacher side by side with the built-in model: Real-ESRGAN x4plus exported through the
project's own ONNX and OpenVINO targets (FP32; bf16 at compile time; NNCF INT8 where it passes
a PSNR gate against the PyTorch teacher) against the built-in model's default engine (its
cached export), upscaling the same degraded held-out photos in one run.

Per engine: seconds per output megapixel (median over the photos, after one warm-up), MACs per
output pixel, peak memory (each engine runs in its own process: its peak RSS), and quality
(PSNR-Y, SSIM-Y, CIEDE2000 against HR, NIQE, PSNR-Y against the PyTorch teacher).

    python benchmarks/teacher_peer.py [--photos 6] [--lr-size 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TILE = 64
TEACHER_ENGINES = (
    "teacher-onnx-fp32",
    "teacher-openvino-fp32",
    "teacher-openvino-bf16",
    "teacher-openvino-int8",
)
ENGINES = ("builtin-default", *TEACHER_ENGINES)
INT8_GATE_DB = 30.0  # PSNR-Y of the INT8 teacher's output against the PyTorch teacher's


class TeacherEngine:
    """The tiler's engine interface over a teacher graph: no routing, one tile a call."""

    scale, margin, batch = 4, 0, 1

    def __init__(self, run: Callable[[np.ndarray], np.ndarray]) -> None:
        self._run = run
        self.router_size = TILE

    def route(self, lr: np.ndarray) -> np.ndarray:
        return np.zeros((1, 1), np.float32)

    def run(self, lr: np.ndarray, s: np.ndarray) -> np.ndarray:
        return np.clip(self._run(np.ascontiguousarray(lr, np.float32)), 0, 1)

    def passes(self) -> int:
        return 0

    def prepare(self, tiles: object) -> None:
        """Nothing to gather: the teacher has no whole-image statistics."""


def teacher_spec() -> Any:
    from mor_edge.stage_contract import StageSpec, TensorSpec

    return StageSpec(
        "teacher", (TensorSpec("lr", (1, 3, TILE, TILE)),), (TensorSpec("sr", (1, 3, 4 * TILE, 4 * TILE)),)
    )


def export_teacher(folder: Path, calibration: list[np.ndarray]) -> None:
    """teacher.onnx and teacher.xml (FP32) through the project's targets; teacher-int8.xml
    through the OpenVINO target's NNCF quantisation over `calibration` tiles."""
    from mor_edge.export.onnx_export import OnnxTarget
    from mor_edge.export.openvino_export import OpenVinoTarget
    from mor_edge.teacher import load_teacher

    net, spec = load_teacher(), teacher_spec()
    OnnxTarget().export_stage(net, spec, folder / "teacher.onnx")
    target = OpenVinoTarget()
    target.export_stage(net, spec, folder / "teacher.xml")
    target.quantize_stage(
        folder / "teacher.onnx", folder / "teacher-int8.xml", [{"lr": x[None]} for x in calibration], set()
    )


def open_engine(name: str, artifacts: Path, threads: int) -> Any:
    if name == "builtin-default":
        from mor_edge.cli.upscale_command import choose_engine

        engine, _, source = choose_engine(None, None, False, "tile", None, threads, "auto", "cpu", None)
        print(f"builtin-default: {source}", file=sys.stderr)
        return engine
    if name == "teacher-onnx-fp32":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(
            str(artifacts / "teacher.onnx"), options, providers=["CPUExecutionProvider"]
        )
        return TeacherEngine(lambda x: session.run(None, {"lr": x})[0])
    import openvino as ov

    precision = "bf16" if name.endswith("bf16") else "f32"
    graph = artifacts / ("teacher-int8.xml" if name.endswith("int8") else "teacher.xml")
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
    compiled = ov.Core().compile_model(str(graph), "CPU", config)
    return TeacherEngine(lambda x: compiled(x)[0])


def run_engine(name: str, inputs: Path, outputs: Path, artifacts: Path, threads: int) -> None:
    """Child process: upscale every input (the first twice, its first run a warm-up); print
    the per-image seconds and this process's peak RSS as JSON."""
    from mor_edge.upscale import TileOptions, upscale_file

    engine = open_engine(name, artifacts, threads)
    options = TileOptions(tile=TILE, overlap=TILE // 8, progress=False)
    files = sorted(inputs.glob("*.png"))
    upscale_file(files[0], outputs / files[0].name, engine, options)
    seconds = []
    for src in files:
        t0 = time.perf_counter()
        upscale_file(src, outputs / src.name, engine, options)
        seconds.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's peak resident memory since its exec (VmHWM; `ru_maxrss` would count the
    parent's memory at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def teacher_macs() -> float:
    """Multiply-accumulates of the teacher on one 64x64 input (every convolution)."""
    import torch

    from mor_edge.teacher import load_teacher

    total = 0.0
    net = load_teacher()

    def count(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        k = module.weight[0].numel()  # type: ignore[index]
        total += float(output.numel() * k)

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 3, TILE, TILE))
    for h in hooks:
        h.remove()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--lr-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="benchmarks/results/teacher_peer.json")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--outputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        run_engine(args.engine, args.inputs, args.outputs, args.artifacts, args.threads)
        return
    compare(args)


def compare(args: argparse.Namespace) -> None:
    import torch
    from PIL import Image

    from mor_edge.builtin import load_model
    from mor_edge.data import degraded_pairs
    from mor_edge.evaluation import ciede2000, niqe_of, psnr_y, ssim_y
    from mor_edge.photos import evaluation_photos, training_photos
    from mor_edge.report import stage_macs
    from mor_edge.runtimes.latency import machine
    from mor_edge.teacher import load_teacher

    scale = 4
    pairs = degraded_pairs(
        args.lr_size * scale, args.photos, seed=1234, pool=list(evaluation_photos().values())
    )
    lr = (pairs.lr.clamp(0, 1) * 255).round() / 255  # what a PNG holds
    calib = degraded_pairs(TILE * scale, 32, seed=99, pool=list(training_photos().values())).lr.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs, artifacts = root / "in", root / "artifacts"
        inputs.mkdir()
        artifacts.mkdir()
        for i, x in enumerate(lr):
            Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
                inputs / f"{i:02d}.png"
            )
        t0 = time.perf_counter()
        export_teacher(artifacts, list(calib))
        export_seconds = time.perf_counter() - t0
        teacher = load_teacher()
        with torch.no_grad():
            reference = torch.cat([teacher.upscale(lr[i : i + 1]) for i in range(len(lr))])
        macs = {
            "builtin-default": float(stage_macs(load_model(None))["total"]),
            **dict.fromkeys(TEACHER_ENGINES, teacher_macs()),
        }
        results: dict[str, Any] = {}
        for name in ENGINES:
            outputs = root / name
            outputs.mkdir()
            command = [
                sys.executable,
                __file__,
                "--engine",
                name,
                "--inputs",
                str(inputs),
                "--outputs",
                str(outputs),
            ]
            command += ["--artifacts", str(artifacts), "--threads", str(args.threads)]
            run = subprocess.run(command, capture_output=True, text=True, check=True)
            timing = json.loads(run.stdout.strip().splitlines()[-1])
            sr = torch.stack(
                [
                    torch.from_numpy(np.asarray(Image.open(outputs / f"{i:02d}.png").convert("RGB")).copy())
                    .permute(2, 0, 1)
                    .float()
                    / 255
                    for i in range(len(lr))
                ]
            )
            n = len(lr)
            megapixels = sr.shape[-1] * sr.shape[-2] / 1e6
            results[name] = {
                "seconds_per_output_mp": round(float(np.median(timing["seconds"])) / megapixels, 3),
                "macs_per_output_pixel": round(macs[name] / (TILE * scale) ** 2),
                "peak_rss_mib": timing["peak_rss_mib"],
                "psnr_y": float(np.mean([psnr_y(sr[i], pairs.hr[i], scale) for i in range(n)])),
                "ssim_y": float(np.mean([ssim_y(sr[i], pairs.hr[i], scale) for i in range(n)])),
                "ciede2000": float(np.mean([ciede2000(sr[i], pairs.hr[i]) for i in range(n)])),
                "niqe": float(np.mean(niqe_of(sr, scale))),
                "psnr_y_vs_teacher": float(np.mean([psnr_y(sr[i], reference[i], scale) for i in range(n)])),
                "engine": run.stderr.strip().splitlines()[-1] if name == "builtin-default" else name,
            }
            print(name, results[name], flush=True)
    int8 = results["teacher-openvino-int8"]
    int8["passes_gate"] = int8["psnr_y_vs_teacher"] >= INT8_GATE_DB
    out = {
        "machine": machine(),
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "photos": f"{args.photos} degraded held-out crops, LR {args.lr_size}x{args.lr_size} (seed 1234)",
        "tile": TILE,
        "int8_gate_db": INT8_GATE_DB,
        "teacher_export_seconds": round(export_seconds, 1),
        "engines": results,
    }
    Path(args.results).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
