"""Core ML package sizes: bucket deduplication and weight compression, one run.

tiny: the built-in model exported static with 1 and 8 buckets (FP16), and with 8-bit
weights and 6-bit palettes (1 bucket); whole-package and weight-file sizes.

sd21: the UNet stage alone (SD 2.1-base architecture, seeded random weights, 64x64 latents)
converted as one Core ML function per bucket for 8 buckets (FP16), merged into one
multifunction package, and with 8-bit weights. Conversion time and dequantized weight error
are recorded.

    python benchmarks/coreml_size.py --presets tiny sd21 --out benchmarks/results/coreml_size.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def weights_bytes(package: Path) -> int:
    return sum(p.stat().st_size for p in (package / "Data" / "com.apple.CoreML" / "weights").iterdir())


def tiny(root: Path) -> dict[str, Any]:
    from mor_edge.builtin import load_model
    from mor_edge.export.exporter import export
    from mor_edge.export.manifest import size_bytes
    from mor_edge.routing import Buckets

    model = load_model(None)
    eight = Buckets(Buckets.grid(2, 4).centres[:8])
    one = Buckets(Buckets.grid(2, 4).centres[:1])
    runs = {
        "1 bucket fp16": (one, "fp16"),
        "8 buckets fp16": (eight, "fp16"),
        "1 bucket w8": (one, "w8"),
        "1 bucket palette6": (one, "palette6"),
    }
    out: dict[str, Any] = {}
    for name, (buckets, precision) in runs.items():
        t0 = time.perf_counter()
        folder = export(
            model,
            root / name.replace(" ", "-"),
            target="coreml",
            precision=precision,
            buckets=buckets,
            progress=False,
        )
        unet = next(p for p in folder.iterdir() if p.name.startswith("unet"))
        manifest = json.loads((folder / "manifest.json").read_text())
        out[name] = {
            "export_s": time.perf_counter() - t0,
            "unet_package_bytes": size_bytes(unet),
            "unet_weights_bytes": weights_bytes(unet),
            "total_bytes": sum(manifest["sizes_bytes"].values()),
            "unet_max_relative_weight_error": manifest["stages"]["unet"]["variants"][0]["validation"][
                "weights"
            ]["max_relative_error"],
        }
        print(name, json.dumps(out[name]), flush=True)
    base = out["1 bucket fp16"]
    out["ratios"] = {
        "8 buckets / 1 bucket, unet package": out["8 buckets fp16"]["unet_package_bytes"]
        / base["unet_package_bytes"],
        "8 buckets / 1 bucket, unet weights": out["8 buckets fp16"]["unet_weights_bytes"]
        / base["unet_weights_bytes"],
        "w8 / fp16, unet package": out["1 bucket w8"]["unet_package_bytes"] / base["unet_package_bytes"],
        "palette6 / fp16, unet package": out["1 bucket palette6"]["unet_package_bytes"]
        / base["unet_package_bytes"],
    }
    return out


def sd21_unet(root: Path, buckets: int) -> dict[str, Any]:
    from mor_edge.builtin import random_model
    from mor_edge.config import sd21_config
    from mor_edge.export.coreml_export import CoreMLTarget
    from mor_edge.export.manifest import size_bytes
    from mor_edge.export.routing_plan import sliced
    from mor_edge.export.stages import StageModule
    from mor_edge.routing import Buckets
    from mor_edge.stage_contract import stage_specs

    model = random_model(sd21_config(label="random sd21"), seed=0).eval()
    spec = stage_specs(model.config, "static")["unet"]
    centres = Buckets.grid(2, 4).centres
    out: dict[str, Any] = {}
    paths = []
    jobs = [(f"bucket {b} fp16", b, "fp16") for b in range(buckets)] + [("bucket 0 w8", 0, "w8")]
    for i, (name, bucket, precision) in enumerate(jobs):
        target = CoreMLTarget(deployment_target="iOS18")
        path = root / f"sd21-unet-{i}.mlpackage"
        t0 = time.perf_counter()
        with sliced(model.unet_layers(), centres[bucket]):
            target.export_stage(StageModule(model, "unet", "static"), spec, path, precision)
        report = target.reports[path.name]
        out[name] = {
            "convert_s": time.perf_counter() - t0,
            "package_bytes": size_bytes(path),
            "weights_compared": report["weights"]["compared"],
            "max_relative_weight_error": report["weights"]["max_relative_error"],
        }
        print(name, json.dumps(out[name]), flush=True)
        if precision == "fp16":
            paths.append(path)
    combined = root / "sd21-unet-combined.mlpackage"
    CoreMLTarget().combine_variants(paths, combined, [f"v{i}" for i in range(len(paths))])
    single = out["bucket 0 fp16"]["package_bytes"]
    out[f"{buckets} buckets fp16 package_bytes"] = size_bytes(combined)
    out["ratios"] = {
        f"{buckets} buckets / 1 bucket": size_bytes(combined) / single,
        "w8 / fp16": out["bucket 0 w8"]["package_bytes"] / single,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["tiny", "sd21"], choices=["tiny", "sd21"])
    parser.add_argument("--sd21-buckets", type=int, default=8, help="functions in the sd21 UNet package")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/coreml_size.json"))
    args = parser.parse_args()
    # presets not run now keep their earlier results in the file
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["torch"] = torch.__version__
    with tempfile.TemporaryDirectory() as tmp:
        if "tiny" in args.presets:
            results["tiny"] = tiny(Path(tmp))
        if "sd21" in args.presets:
            results["sd21_unet"] = sd21_unet(Path(tmp), args.sd21_buckets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
