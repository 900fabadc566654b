"""Distillation pilot: the same dense-base training at equal compute with HR targets, the
teacher's targets, and a blend, then `evaluate`'s figures (NIQE, PSNR/SSIM/CIEDE2000 against
HR, PSNR against the teacher) on the same held-out crops.

Each variant starts from the built-in model and trains its dense base for `--steps` more steps
(the estimator and MoR stages untouched), so the only difference is the target.

    python benchmarks/distill_pilot.py --steps 400 --images 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from mor_edge.builtin import load_model
    from mor_edge.evaluation import evaluate, save_grid
    from mor_edge.runtimes.latency import machine
    from mor_edge.teacher import load_teacher
    from mor_edge.train_config import TrainConfig
    from mor_edge.training import Trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--pool-items", type=int, default=3008)
    parser.add_argument("--weights", default="hr,1,0.5", help="comma list: hr, or a teacher weight")
    parser.add_argument("--out", default="runs/distill-pilot")
    parser.add_argument("--results", default="benchmarks/results/distill_pilot.json")
    args = parser.parse_args()
    teacher = load_teacher()
    out = Path(args.out)
    results: dict[str, object] = {
        "machine": {**machine(), "threads": torch.get_num_threads()},
        "date": time.strftime("%Y-%m-%d"),
        "steps": args.steps,
        "images": args.images,
        "variants": {},
    }
    report, pairs, outputs = evaluate(load_model(None), args.images, teacher=teacher)
    results["variants"]["shipped"] = summary(report)  # type: ignore[index]
    for variant in args.weights.split(","):
        name = "hr" if variant == "hr" else f"teacher-{variant}"
        config = TrainConfig(estimator_steps=0, mor_steps=0, base_steps=args.steps, log_every=50)
        if variant != "hr":
            config.teacher, config.teacher_weight, config.pool_items = (
                "realesrgan-x4plus",
                float(variant),
                args.pool_items,
            )
        t0 = time.perf_counter()
        model = Trainer(load_model(None), config, out / name).run()
        seconds = time.perf_counter() - t0
        report, pairs, outputs = evaluate(model, args.images, teacher=teacher)
        save_grid(
            pairs.lr,
            outputs,
            model.config.scale,
            out / f"{name}-grid.png",
            hr=pairs.hr,
            labels=pairs.severities,
        )
        results["variants"][name] = {**summary(report), "train_seconds": round(seconds, 1)}  # type: ignore[index]
        print(name, json.dumps(results["variants"][name]), flush=True)  # type: ignore[index]
        Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


def summary(report: dict[str, object]) -> dict[str, object]:
    keys = [k for k in report if k.startswith(("niqe", "psnr", "ssim", "ciede"))]
    by = report["by_severity"]
    return {
        "all": {k: round(float(report[k]), 4) for k in keys},  # type: ignore[arg-type]
        "by_severity": {lv: {k: round(float(v), 4) for k, v in m.items()} for lv, m in by.items()},  # type: ignore[attr-defined]
    }


if __name__ == "__main__":
    main()
