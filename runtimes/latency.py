"""Single-step latency: per stage and end to end, warm-up then timed runs, median and p90."""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tqdm import tqdm

from mor_edge.stage_contract import ROUTED_STAGES, STAGES

from .base import Runtime


def time_call(fn: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
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


def time_alternating(calls: Mapping[str, Callable[[], Any]], warmup: int, runs: int) -> dict[str, float]:
    """Median ms of each call, the calls made in turn each round (the order rotated), so that
    a slow spell of a shared machine falls on all of them: ratios between them hold better
    than ones between back-to-back `time_call`s."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {n: float(np.median(t)) for n, t in times.items()}


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
    }


def bench_calls(runtime: Runtime) -> dict[str, Callable[[], Any]]:
    """What `run_bench` times, by name: every stage (bucket 0's variant in static mode) on its
    dummy inputs, and "end_to_end": the router on one image, then one call of the image
    stages on a full batch of tiles."""
    bucket = 0 if runtime.artifact.routing == "static" else None
    calls: dict[str, Callable[[], Any]] = {}
    for stage in STAGES:
        b = bucket if stage in ROUTED_STAGES else None
        calls[stage] = functools.partial(runtime.run_stage, stage, runtime.specs[stage].dummy_inputs(), b)
    image, tiles = runtime.specs["router"].dummy_inputs()["lr"], runtime.specs["encoder"].dummy_inputs()["lr"]
    calls["end_to_end"] = lambda: runtime.run(tiles, runtime.route(image))
    return calls


def bench_alternating(runtimes: Mapping[str, Runtime], warmup: int, runs: int) -> dict[str, dict[str, Any]]:
    """`bench_calls` of several runtimes timed together by `time_alternating`, so that their
    ratios hold on a shared machine: per runtime, the median ms of each stage ("stages") and
    of the end-to-end call ("end_to_end")."""
    calls = {f"{key} {name}": call for key, rt in runtimes.items() for name, call in bench_calls(rt).items()}
    median = time_alternating(calls, warmup, runs)
    return {
        key: {"stages": {s: median[f"{key} {s}"] for s in STAGES}, "end_to_end": median[f"{key} end_to_end"]}
        for key in runtimes
    }


def run_bench(runtime: Runtime, warmup: int = 3, runs: int = 10, progress: bool = True) -> dict[str, Any]:
    """Time each of `bench_calls` back to back: median and p90 ms per stage and end to end,
    with the runtime's description."""
    calls = bench_calls(runtime)
    timings = {
        name: time_call(call, warmup, runs)
        for name, call in tqdm(calls.items(), desc="bench", disable=not progress, unit="stage")
    }
    report: dict[str, Any] = {"stages": {s: timings[s] for s in STAGES}, "end_to_end": timings["end_to_end"]}
    report.update(
        runtime.describe(),
        target=runtime.artifact.target,
        precision=runtime.artifact.precision,
        routing=runtime.artifact.routing,
        tiles_per_call=runtime.batch,
        warmup=warmup,
        machine=machine(),
    )
    return report
