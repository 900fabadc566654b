"""mor-edge's exports beside Hugging Face Optimum's, stage by stage, on the same runtimes.

One run: the `sd21` preset (SD 2.1-base architecture, seeded random weights, 128x128 -> 512x512)
is written as a diffusers pipeline folder (its UNet and VAE without adapters; a 2-layer text
encoder, which is not timed). Optimum (optimum-onnx) exports that folder to ONNX and
optimum-intel to OpenVINO, FP32 and weight-only INT8, each with its own `optimum-cli` from its
own virtual environment (their transformers/diffusers pins conflict with this project's).
mor-edge exports the same weights: base (no adapters) and static (one bucket's experts
folded) to ONNX and OpenVINO, and static OpenVINO w8. Every graph is then run in this process
on this project's ONNX Runtime and OpenVINO with mor-edge's session settings; first the
outputs are compared (Optimum's UNet noise turned into x0, its VAE moments into the scaled
latent, the colour step applied to its decoded image: the models must agree), then the graphs
of one stage and runtime are timed in alternating rounds.

    python benchmarks/optimum_compare.py --optimum-cli /venvs/optimum/bin/optimum-cli \\
        --optimum-intel-cli /venvs/optimum-intel/bin/optimum-cli \\
        --out benchmarks/results/optimum_compare.json

The two environments (versions that resolve beside torch 2.13 CPU; torchvision is removed
from the second because pip's build of it does not load with this torch, and optimum-intel
runs without it):

    python -m venv /venvs/optimum && /venvs/optimum/bin/pip install torch==2.13.0 \\
        optimum-onnx==0.1.0 optimum==2.1.0 transformers==4.57.6 diffusers==0.39.0 \\
        onnxruntime==1.32.0 onnx==1.23.2
    python -m venv /venvs/optimum-intel && /venvs/optimum-intel/bin/pip install torch==2.13.0 \\
        && echo torch==2.13.0 > /tmp/c.txt && /venvs/optimum-intel/bin/pip install -c /tmp/c.txt \\
        "optimum-intel[openvino,diffusers]==2.2.0" openvino==2026.4.1 nncf==3.4.0 \\
        transformers==4.57.6 onnxruntime==1.32.0 "numpy<2.4" \\
        && /venvs/optimum-intel/bin/pip uninstall -y torchvision
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("encoder", "unet", "decoder")
# mor-edge exports: name -> (target, routing, precision)
MOR_EXPORTS = {
    "mor-edge base onnx": ("onnx", "base", "fp32"),
    "mor-edge static onnx": ("onnx", "static", "fp32"),
    "mor-edge base openvino": ("openvino", "base", "fp32"),
    "mor-edge static openvino": ("openvino", "static", "fp32"),
    "mor-edge static openvino w8": ("openvino", "static", "w8"),
}
# Optimum exports: name -> (which cli, its arguments after --model FOLDER)
OPTIMUM_EXPORTS = {
    "optimum onnx": ("optimum", ["export", "onnx", "--task", "text-to-image"]),
    "optimum-intel openvino": (
        "intel",
        ["export", "openvino", "--task", "text-to-image", "--weight-format", "fp32"],
    ),
    "optimum-intel openvino w8": (
        "intel",
        ["export", "openvino", "--task", "text-to-image", "--weight-format", "int8"],
    ),
}
OPTIMUM_STAGE_FILES = {"encoder": "vae_encoder", "unet": "unet", "decoder": "vae_decoder"}
GROUPS = {  # what is timed together: one runtime, the graphs that compare
    "onnxruntime": ["mor-edge base onnx", "mor-edge static onnx", "optimum onnx"],
    "openvino": ["mor-edge base openvino", "mor-edge static openvino", "optimum-intel openvino"],
    "openvino w8": ["mor-edge static openvino w8", "optimum-intel openvino w8"],
}


def build_model() -> Any:
    from mor_edge.builtin import random_model
    from mor_edge.config import sd21_config

    return random_model(sd21_config(label="random sd21"), seed=0)


def write_pipeline(folder: Path) -> None:
    """The model's base UNet and VAE (adapters stripped) as a diffusers pipeline folder."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fixtures import tiny_tokenizer

    model = build_model()
    c = model.config

    def plain(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        state = module.state_dict()
        return {
            k.replace(".base.", "."): v for k, v in state.items() if "lora_" not in k and "gate." not in k
        }

    unet, vae = UNet2DConditionModel(**c.unet), AutoencoderKL(**c.vae)
    unet.load_state_dict(plain(model.unet))
    vae.load_state_dict(plain(model.vae))
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = c.prompt_length
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=unet.config.cross_attention_dim,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        max_position_embeddings=c.prompt_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    scheduler = DDPMScheduler(
        beta_schedule=c.beta_schedule,
        beta_start=c.beta_start,
        beta_end=c.beta_end,
        prediction_type=c.prediction_type,
    )
    StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text).eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    np.save(folder / "prompt_embeds.npy", model.prompt_embeds.detach().numpy())
    write_bpe_files(folder / "tokenizer")


def write_bpe_files(folder: Path) -> None:
    """vocab.json and merges.txt beside tokenizer.json: the transformers 4.x of Optimum's
    environments reads a CLIP tokenizer from those."""
    bpe = json.loads((folder / "tokenizer.json").read_text())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (folder / "vocab.json").write_text(json.dumps(bpe["vocab"]))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def export_child(name: str, out: str) -> None:
    """Runs in a fresh process: one mor-edge export of the model."""
    import torch

    from mor_edge.export.exporter import export
    from mor_edge.routing import Buckets

    target, routing, precision = MOR_EXPORTS[name]
    model = build_model()
    buckets = Buckets(torch.full((1, len(model.config.prompt_pairs)), 0.5)) if routing == "static" else None
    export(model, out, target=target, routing=routing, precision=precision, buckets=buckets, progress=False)


def run_child(cmd: list[str], log: Path) -> dict[str, float]:
    """Run an export command; its time and peak RSS (from the child's own rusage)."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        child = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed; its log: {log}\n" + log.read_text()[-3000:])
    return {"export_s": time.perf_counter() - t0, "peak_rss_gib": usage.ru_maxrss / 2**20}


def feeds(
    config: Any, signature: list[tuple[str, tuple[int, ...], str]], values: dict[str, np.ndarray]
) -> dict:
    """Inputs for one of Optimum's graphs by its input names; its timestep is a scalar."""
    out = {}
    for name, _, dtype in signature:
        if name == "timestep":
            out[name] = np.array(config.timestep, dtype=np.int64 if dtype == "int64" else np.float32)
        else:
            out[name] = values[name]
    return out


class Graphs:
    """One runtime's loaded graphs of one stage: mor-edge's (by artifact) and Optimum's (by file).
    The first mor-edge graph is the reference whose outputs feed the next stage."""

    def __init__(self, stage: str, names: list[str], folders: dict[str, Path], config: Any, threads: int):
        from mor_edge.runtimes.registry import load_runtime

        self.stage, self.config = stage, config
        self.calls: dict[str, Any] = {}
        runtimes = {n: load_runtime(folders[n], threads=threads) for n in names if n.startswith("mor-edge")}
        self.reference = next(iter(runtimes))
        for name in names:
            if name in runtimes:
                bucket = 0 if runtimes[name].artifact.routing == "static" else None
                self.calls[name] = lambda v, r=runtimes[name], b=bucket: r.run_stage(stage, v, b)
            else:
                sub = folders[name] / OPTIMUM_STAGE_FILES[stage]
                path = next(p for p in sorted(sub.iterdir()) if p.suffix in (".onnx", ".xml"))
                call, signature = runtimes[self.reference].load_graph(path)
                self.calls[name] = lambda v, c=call, s=signature: c(feeds(config, s, v))[0]

    def agreement(self, values: dict[str, np.ndarray]) -> dict[str, float]:
        """Max |difference| of each graph's output, in mor-edge's terms (Optimum's UNet noise
        as x0, its VAE moments as the scaled latent, its decoded image after the colour step),
        from the reference's. Optimum against mor-edge base must be float noise; static
        differs by its folded experts."""
        import torch

        from mor_edge.colour import colour_fix
        from mor_edge.model import alpha_bar

        c = self.config
        outputs = {name: np.asarray(call(values), np.float64) for name, call in self.calls.items()}
        for name, raw in outputs.items():
            if name.startswith("mor-edge"):
                continue
            if self.stage == "encoder":
                outputs[name] = raw[:, : raw.shape[1] // 2] * c.vae["scaling_factor"]
            elif self.stage == "unet":
                a = alpha_bar(c)
                outputs[name] = (values["latent"] - math.sqrt(1 - a) * raw) / math.sqrt(a)
            else:
                fixed = colour_fix(
                    torch.from_numpy(raw).float(),
                    torch.from_numpy(values["up"]),
                    c.colour_fix,
                    c.colour_levels,
                )
                outputs[name] = ((fixed + 1) / 2).clamp(0, 1).double().numpy()
        ref = outputs.pop(self.reference)
        return {name: float(np.abs(out - ref).max()) for name, out in outputs.items()}


def stage_values(
    stage: str, config: Any, lr: np.ndarray, up: np.ndarray, latent: np.ndarray, prompt: np.ndarray
) -> dict:
    """Every input either tool's graphs of `stage` take, by name (`latent` is the encoder's
    output for the UNet, the UNet's x0 for the decoder)."""
    if stage == "encoder":
        return {"lr": lr, "sample": up, "up": up}
    if stage == "unet":
        return {"latent": latent, "sample": latent, "encoder_hidden_states": prompt}
    return {"x0": latent, "lr": lr, "up": up, "latent_sample": latent / config.vae["scaling_factor"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--optimum-cli", help="optimum-cli of an environment with optimum-onnx")
    parser.add_argument("--optimum-intel-cli", help="optimum-cli of one with optimum-intel")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    parser.add_argument("--workdir", type=Path, default=None, help="keep exports here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--export-child", nargs=2, metavar=("NAME", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        export_child(*args.export_child)
        return
    if not (args.optimum_cli and args.optimum_intel_cli):
        parser.error("--optimum-cli and --optimum-intel-cli are required")

    from mor_edge.config import sd21_config
    from mor_edge.runtimes.base import usable_cores
    from mor_edge.runtimes.latency import machine, time_alternating

    threads = args.threads or usable_cores()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mor-optimum-"))
    work.mkdir(parents=True, exist_ok=True)
    pipeline = work / "sd21-diffusers"
    if not (pipeline / "model_index.json").is_file():
        write_pipeline(pipeline)
    gc.collect()
    clis = {"optimum": args.optimum_cli, "intel": args.optimum_intel_cli}
    folders, exports = {}, {}
    for name in [*MOR_EXPORTS, *OPTIMUM_EXPORTS]:
        folders[name] = work / name.replace(" ", "-")
        record = work / f"{folders[name].name}.export.json"
        if folders[name].exists() and record.is_file():  # made by an earlier run with this --workdir
            exports[name] = json.loads(record.read_text())
            continue
        if name in MOR_EXPORTS:
            cmd = [sys.executable, __file__, "--export-child", name, str(folders[name])]
        else:
            cli, rest = OPTIMUM_EXPORTS[name]
            cmd = [clis[cli], *rest, "--model", str(pipeline), str(folders[name])]
        shutil.rmtree(folders[name], ignore_errors=True)
        exports[name] = run_child(cmd, work / f"{folders[name].name}.log")
        record.write_text(json.dumps(exports[name]))
        print(name, json.dumps(exports[name]), flush=True)

    import torch

    from mor_edge.resize import BicubicUpsample

    config = sd21_config()
    lr = np.random.default_rng(0).random((1, 3, config.lr_size, config.lr_size), dtype=np.float32)
    up = (BicubicUpsample(config.scale)(torch.from_numpy(lr)).clamp(0, 1) * 2 - 1).numpy()
    prompt = np.load(pipeline / "prompt_embeds.npy")
    results: dict[str, Any] = {
        "machine": machine(),
        "threads": threads,
        "versions": versions(clis),
        "warmup": args.warmup,
        "runs": args.runs,
        "exports": exports,
        "groups": {},
    }
    for group, names in GROUPS.items():
        entry: dict[str, Any] = {}
        latent = np.zeros(0, np.float32)
        for stage in STAGES:
            graphs = Graphs(stage, names, folders, config, threads)
            values = stage_values(stage, config, lr, up, latent, prompt)
            entry[stage] = {
                "max_abs_diff": graphs.agreement(values),
                "median_ms": time_alternating(
                    {n: functools.partial(call, values) for n, call in graphs.calls.items()},
                    args.warmup,
                    args.runs,
                ),
            }
            latent = np.asarray(graphs.calls[graphs.reference](values), np.float32)
            print(group, stage, json.dumps(entry[stage]), flush=True)
            del graphs
            gc.collect()
        results["groups"][group] = entry
    print_table(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def versions(clis: dict[str, str]) -> dict[str, str]:
    import onnxruntime
    import openvino

    found = {"onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version()}
    for key, cli in clis.items():
        python = Path(cli).with_name("python")
        probe = "import importlib.metadata as m; print(m.version('optimum'), m.version('optimum-%s'))" % (
            "onnx" if key == "optimum" else "intel"
        )
        found[key] = subprocess.run([str(python), "-c", probe], capture_output=True, text=True).stdout.strip()
    return found


def print_table(results: dict[str, Any]) -> None:
    for group, entry in results["groups"].items():
        names = list(next(iter(entry.values()))["median_ms"])
        theirs = next(n for n in names if n.startswith("optimum"))
        print(f"\n{group}: median ms ({results['runs']} alternating rounds), ratio to {theirs}")
        print(f"{'stage':<9}" + "".join(f"{n:>34}" for n in names))
        for stage, info in entry.items():
            row = f"{stage:<9}"
            for n in names:
                ms = info["median_ms"][n]
                row += f"{ms:>25.1f} ({ms / info['median_ms'][theirs]:.2f}x)"
            print(row)


if __name__ == "__main__":
    main()
