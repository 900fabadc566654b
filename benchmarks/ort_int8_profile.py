"""Where ONNX Runtime's INT8 time goes, against its FP32, per stage and per operator type.

The built-in model is exported twice with one static bucket (`--bucket-levels 1`): FP32, and
INT8 (the project's QDQ path, calibrated on 16 samples). Each stage graph then runs under ONNX
Runtime's profiler (CPU, `--threads`, full graph optimisation, as the runtime adapter runs it)
and the kernel times are summed per operator type, per run. The fused kernels ORT made from
the QDQ pattern (QLinearConv, QLinearMatMul, ...) count as int8 compute; QuantizeLinear and
DequantizeLinear left standing count as conversion; the rest is float work.

    python benchmarks/ort_int8_profile.py --out benchmarks/results/ort_int8_profile.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("encoder", "unet", "decoder")
CONVERSION = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def is_int8_kernel(op: str) -> bool:
    return op.startswith(("QLinear", "QGemm", "QAttention")) or op in {"ConvInteger", "MatMulInteger"}


def open_profiled(path: Path, threads: int, scratch: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # as the runtime adapter: no spinning threads (here, the idle session's would steal the CPU)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(scratch / f"{path.parent.name}-{path.stem}")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def summarise(events: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Median wall time of the timed runs and their mean kernel time by operator type."""
    model_runs = sorted((e["ts"], e["dur"]) for e in events if e.get("name") == "model_run")
    timed = model_runs[warmup:]
    cut = timed[0][0]  # kernels of the timed runs only
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= cut:
            by_op[e["args"]["op_name"]] += e["dur"] / 1000 / len(timed)
    total = sum(by_op.values())
    conversion = sum(v for k, v in by_op.items() if k in CONVERSION)
    int8 = sum(v for k, v in by_op.items() if is_int8_kernel(k))
    return {
        "run_ms": float(np.median([dur for _, dur in timed])) / 1000,
        "kernel_ms": total,
        "conversion_ms": conversion,
        "int8_kernels_ms": int8,
        "float_ms": total - conversion - int8,
        "by_op_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
    }


def profile_stage(
    graphs: dict[str, Path], threads: int, warmup: int, runs: int, scratch: Path
) -> dict[str, dict[str, Any]]:
    """Each precision's graph of one stage on the same random inputs, runs alternating between
    them (so that a noisy machine slows both alike), profiled."""
    sessions = {k: open_profiled(path, threads, scratch) for k, path in graphs.items()}
    rng = np.random.default_rng(0)
    first = next(iter(sessions.values()))
    feed = {i.name: rng.random([int(d) for d in i.shape], dtype=np.float32) for i in first.get_inputs()}
    for _ in range(warmup + runs):
        for session in sessions.values():
            session.run(None, feed)
    return {
        k: summarise(json.loads(Path(session.end_profiling()).read_text()), warmup)
        for k, session in sessions.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from mor_edge.builtin import load_model
    from mor_edge.calib.sampling import build_calibration_set
    from mor_edge.export.exporter import export
    from mor_edge.export.manifest import Artifact
    from mor_edge.export.routing_plan import default_buckets

    model = load_model(None)
    calibration = build_calibration_set(model, 16, bucket_levels=1, routings=("static",), progress=False)
    results: dict[str, Any] = {"threads": args.threads, "runs": args.runs, "model": model.config.name}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = {
            precision: export(
                model,
                root / precision,
                target="onnx",
                precision=precision,
                buckets=default_buckets(model, 1),
                calibration=calibration if precision == "int8" else None,
                progress=False,
            )
            for precision in ("fp32", "int8")
        }
        results.update({precision: {} for precision in folders})
        for stage in STAGES:
            graphs = {
                precision: folder / Artifact(folder).checked.stages[stage].variants[0].file
                for precision, folder in folders.items()
            }
            for precision, summary in profile_stage(graphs, args.threads, 3, args.runs, root).items():
                results[precision][stage] = summary
    header = ("stage", "FP32 ms", "INT8 ms", "speed", "Q/DQ ms", "int8 ops", "float ops")
    print(f"{header[0]:<9}" + "".join(f"{h:>10}" for h in header[1:]))
    for stage in STAGES:
        f, q = results["fp32"][stage], results["int8"][stage]
        print(
            f"{stage:<9}{f['run_ms']:>10.1f}{q['run_ms']:>10.1f}{f['run_ms'] / q['run_ms']:>9.2f}x"
            f"{q['conversion_ms']:>10.1f}{q['int8_kernels_ms']:>10.1f}{q['float_ms']:>10.1f}"
        )
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(q["by_op_ms"].items())[:6])
        print(f"         INT8 top ops (ms): {top}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
