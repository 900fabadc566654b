"""Distillation pilot: dense-base training at equal compute with HR targets, the teacher's
targets, or a blend, then `evaluate`'s figures (NIQE, PSNR/SSIM/CIEDE2000 against HR, PSNR
against the teacher) on the same held-out crops, at each colour-step level asked for.

By default each variant starts from the built-in model and trains its dense base for `--steps`
more steps (estimator and MoR stages untouched), so the only difference is the target;
`--from-scratch` starts from `initial_model` instead (with `--latent-channels`: another latent
width; with `--prediction-type v_prediction`: the UNet's output read as v, so that at t=999
x0 is almost minus the UNet's output instead of 14.6x the difference of two near-equal terms).
Results are added to `--results` under the command line that made them.

    python benchmarks/distill_pilot.py --steps 300 --weights hr,1,0.5
    python benchmarks/distill_pilot.py --steps 600 --weights 1 --train-levels 4 --levels 3,4,5
    python benchmarks/distill_pilot.py --steps 800 --weights 1 --train-levels 4 --levels 4 \\
        --from-scratch --latent-channels 16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch


def student(from_scratch: bool, latent_channels: int, prediction: str, config: Any) -> Any:
    from mor_edge import config as presets
    from mor_edge.builtin import load_model
    from mor_edge.training import initial_model

    if not from_scratch:
        return load_model(None)

    def widened(**overrides: Any) -> Any:
        tiny = presets.tiny_config(**overrides)
        unet = {**tiny.unet, "in_channels": latent_channels, "out_channels": latent_channels}
        vae = {**tiny.vae, "latent_channels": latent_channels}
        return dataclasses.replace(tiny, vae=vae, unet=unet, prediction_type=prediction)

    presets.PRESETS["pilot"] = widened
    return initial_model("pilot", config.seed, config)


def main() -> None:
    from mor_edge.builtin import load_model
    from mor_edge.evaluation import evaluate, save_grid
    from mor_edge.runtimes.latency import machine
    from mor_edge.teacher import load_teacher
    from mor_edge.train_config import TrainConfig
    from mor_edge.training import Trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--pool-items", type=int, default=3008)
    parser.add_argument("--weights", default="hr,1,0.5", help="comma list: hr, or a teacher weight")
    parser.add_argument("--train-levels", type=int, default=2, help="colour-step levels while training")
    parser.add_argument("--levels", default="1", help="comma list: colour-step levels to evaluate at")
    parser.add_argument("--lr", type=float, default=None, help="the base stage's learning rate")
    parser.add_argument("--from-scratch", action="store_true")
    parser.add_argument("--latent-channels", type=int, default=4, help="with --from-scratch")
    parser.add_argument(
        "--prediction-type",
        choices=["epsilon", "v_prediction"],
        default="epsilon",
        help="with --from-scratch",
    )
    parser.add_argument("--out", default="runs/distill-pilot")
    parser.add_argument("--results", default="benchmarks/results/distill_pilot.json")
    args = parser.parse_args()
    teacher = load_teacher()
    out, results_path = Path(args.out), Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": []}
    run: dict[str, Any] = {
        "command": "python benchmarks/distill_pilot.py " + " ".join(sys.argv[1:]),
        "machine": {**machine(), "threads": torch.get_num_threads()},
        "date": time.strftime("%Y-%m-%d"),
        "variants": {},
    }
    results["runs"].append(run)
    report, _, _ = evaluate(load_model(None), args.images, teacher=teacher)
    run["variants"]["shipped, colour levels 1"] = summary(report)
    for variant in args.weights.split(","):
        name = "hr" if variant == "hr" else f"teacher-{variant}"
        config = TrainConfig(estimator_steps=0, mor_steps=0, base_steps=args.steps, log_every=50)
        config.colour_levels = args.train_levels
        config.lr = args.lr or config.lr
        if variant != "hr":
            config.teacher, config.pool_items = "realesrgan-x4plus", args.pool_items
            config.teacher_weight = float(variant)
        t0 = time.perf_counter()
        model = Trainer(
            student(args.from_scratch, args.latent_channels, args.prediction_type, config), config, out / name
        ).run()
        seconds = time.perf_counter() - t0
        for levels in (int(v) for v in args.levels.split(",")):
            model.config.colour_levels = levels
            report, pairs, outputs = evaluate(model, args.images, teacher=teacher)
            grid = out / f"{name}-levels{levels}-grid.png"
            save_grid(pairs.lr, outputs, model.config.scale, grid, hr=pairs.hr, labels=pairs.severities)
            key = f"{name}, colour levels {levels}"
            run["variants"][key] = {**summary(report), "train_seconds": round(seconds, 1)}
            print(key, json.dumps(run["variants"][key]["all"]), flush=True)
            results_path.write_text(json.dumps(results, indent=2) + "\n")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = [k for k in report if k.startswith(("niqe", "psnr", "ssim", "ciede"))]
    return {
        "all": {k: round(float(report[k]), 4) for k in keys},
        "by_severity": {
            level: {k: round(float(v), 4) for k, v in m.items()} for level, m in report["by_severity"].items()
        },
    }


if __name__ == "__main__":
    main()
