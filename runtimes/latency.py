"""Single-step latency: per stage and end to end, warm-up then timed runs, median and p90."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from mor_edge.export.stages import STAGES
from tqdm import tqdm

from .base import Runtime


def _time(fn: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": float(np.min(times)),
        "runs": runs,
    }


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
    }


def stage_inputs(runtime: Runtime, stage: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in runtime.artifact.stage(stage)["inputs"]:
        shape = tuple(spec["shape"])
        draw = rng.random(shape) if spec["name"] in ("lr", "s") else rng.standard_normal(shape)
        inputs[spec["name"]] = draw.astype(np.float32)
    return inputs


def run_bench(runtime: Runtime, warmup: int = 3, runs: int = 10, progress: bool = True) -> dict[str, Any]:
    """Time every stage (bucket 0's variant in static mode) and the whole pipeline."""
    bucket = 0 if runtime.artifact.routing == "static" else None
    report: dict[str, Any] = {"stages": {}}
    steps = [*STAGES, "end_to_end"]
    for stage in tqdm(steps, desc="bench", disable=not progress, unit="stage"):
        if stage == "end_to_end":
            lr = stage_inputs(runtime, "router")["lr"]
            report["end_to_end"] = _time(lambda: runtime.pipeline(lr), warmup, runs)
        else:
            inputs = stage_inputs(runtime, stage)
            b = bucket if stage in ("encoder", "unet") else None
            report["stages"][stage] = _time(
                lambda s=stage, x=inputs, b=b: runtime.run_stage(s, x, b), warmup, runs
            )
    report.update(
        runtime.describe(),
        target=runtime.artifact.target,
        precision=runtime.artifact.precision,
        routing=runtime.artifact.routing,
        warmup=warmup,
        machine=machine(),
    )
    return report
