"""Training on Hugging Face Accelerate: estimator, dense base, then MoR experts.

Stages (each resumable, run in order, a stage with 0 steps is skipped):

- ``estimator``: for presets without a real CLIP, the CLIP-form estimator learns to predict
  the sampled degradation labels through the prompt-pair score head (BCE on s), its text
  embeddings learned, on the training photos plus dead-leaves images (more content than a
  few photos give). With real CLIP weights (``from_diffusers``) it is used zero-shot.
- ``base``: presets without pretrained SD weights first learn a dense one-step SR model
  (VAE encoder, UNet, decoder), adapters off.
- ``mor``: base frozen; the MoR adapters (A, B) and gates learn with L2 plus the
  degradation-aware load-balancing loss.

Loss: L2 on the SR image. No perceptual network ships offline (LPIPS/VGG weights would have
to be downloaded), so none is used; the log says so. Checkpoints are the model's own
`save_pretrained` (safetensors + config.json) plus the optimizer state as safetensors and a
JSON state file: no pickle anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from .atomic import mark
from .data import random_crop
from .dead_leaves import colour_palette, dead_leaves_images
from .degradations import SEVERITIES, degrade
from .image_io import folder_images
from .model import MoRSR
from .model_folder import write_weights_file
from .photos import training_photos
from .routing import load_balancing_loss, routing_stats
from .train_config import TrainConfig

STAGES = ("estimator", "base", "mor")
LEVELS = tuple(SEVERITIES)
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


@dataclass
class Batch:
    lr: torch.Tensor
    hr: torch.Tensor
    labels: torch.Tensor
    router_lr: torch.Tensor | None = None  # the whole LR image the routing is computed on


class TrainingData:
    """Seeded batches: random HR crops + Real-ESRGAN degradations + labels. Batch `i` of a
    stage depends only on (seed, stage, i, process), so a resumed run sees the same data.

    - estimator: a pool of degraded images at the router's own input size (LR = its image
      size, as evaluation and upscaling feed it), generated once and drawn from with flips
      and quarter turns; the estimator is small and the degradations cost more than its step.
    - base: small crops (cheap steps; the model is convolutional).
    - mor: the router sees the whole degraded image at its input size, the SR loss is taken
      on a region of it, as tiled upscaling routes the whole image and runs tiles."""

    def __init__(
        self, config: TrainConfig, names: list[str], router_size: int, scale: int, process: int = 0
    ) -> None:
        self.config, self.names, self.process = config, names, process
        self.router_size, self.scale = router_size, scale
        self.pool = load_image_pool(config.images)
        # Greyscale photos add content for the estimator only: in the SR stages they pulled
        # the colours of the output towards grey (measured: a visible colour cast).
        self.colour_pool = [p for p in self.pool if not is_grey(p)] or self.pool
        self._estimator_content: list[np.ndarray] | None = None
        self._estimator_pool: tuple[torch.Tensor, torch.Tensor] | None = None
        self._teacher_pool: dict[str, torch.Tensor] | None = None

    def _degraded(self, rng: np.random.Generator, hr_size: int, count: int, estimator: bool = False) -> Batch:
        pool = self.estimator_content() if estimator else self.colour_pool
        hr = torch.stack(
            [random_crop(pool[int(rng.integers(len(pool)))], hr_size, rng) for _ in range(count)]
        )
        # Each image draws a severity band, so that the degradation kinds co-vary with an
        # overall difficulty the way evaluation and calibration sample them.
        levels = [LEVELS[int(i)] for i in rng.integers(len(LEVELS), size=count)]
        lr, params = degrade(hr, seed=int(rng.integers(2**31)), severity=levels)
        labels = torch.tensor([[p.labels()[n] for n in self.names] for p in params], dtype=torch.float32)
        return Batch(lr, hr, labels)

    def estimator_content(self) -> list[np.ndarray]:
        """All photos plus dead-leaves images (made on first use): the estimator's ranking on
        held-out photos was limited by how little content it saw, not by its size."""
        if self._estimator_content is None:
            c = self.config
            palette = colour_palette(self.colour_pool, per_image=3000, seed=c.seed)
            self._estimator_content = self.pool + dead_leaves_images(c.dead_leaves, 512, palette, c.seed)
        return self._estimator_content

    def estimator_pool(self, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self._estimator_pool is None:
            c, chunk = self.config, 50
            parts = []
            for i in tqdm(range(0, c.estimator_pool, chunk), desc="estimator data", disable=not progress):
                rng = np.random.default_rng([c.seed, 0, i, self.process])
                size, count = self.router_size * self.scale, min(chunk, c.estimator_pool - i)
                parts.append(self._degraded(rng, size, count, estimator=True))
            self._estimator_pool = (torch.cat([b.lr for b in parts]), torch.cat([b.labels for b in parts]))
        return self._estimator_pool

    def teacher_pool(self, progress: bool) -> dict[str, torch.Tensor]:
        if self._teacher_pool is None:
            from .teacher_pool import build_pool, pool_spec

            c = self.config
            spec = pool_spec(c.pool_items, self.router_size, self.scale, c.seed, self.colour_pool)
            self._teacher_pool = build_pool(spec, self.colour_pool, self.names, progress)
        return self._teacher_pool

    def _pool_crops(self, rng: np.random.Generator, hr_size: int, count: int, progress: bool) -> Batch:
        """`count` crops of pool items (a random flip and quarter turn each), the target the
        blend of the teacher's SR and HR that `TrainConfig.teacher_weight` sets."""
        pool, k = self.teacher_pool(progress), self.scale
        side, w = hr_size // k, self.config.teacher_weight
        lrs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        picks = rng.integers(pool["lr"].shape[0], size=count)
        for i in picks:
            top, left = (int(v) for v in rng.integers(0, self.router_size - side + 1, size=2))
            lr = pool["lr"][i, :, top : top + side, left : left + side]
            region = (slice(None), slice(top * k, (top + side) * k), slice(left * k, (left + side) * k))
            target = w * pool["teacher"][i][region].float() + (1 - w) * pool["hr"][i][region].float()
            turn, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
            for t, out in ((lr.float(), lrs), (target, targets)):
                t = torch.rot90(t.flip(-1) if flip else t, turn, (-2, -1))
                out.append(t / 255)
        labels = pool["labels"][torch.from_numpy(picks)]
        return Batch(torch.stack(lrs), torch.stack(targets), labels)

    def _sr_pairs(self, rng: np.random.Generator, hr_size: int, count: int, progress: bool) -> Batch:
        """Training pairs for the SR stages: from the teacher pool, or degraded per step."""
        if self.config.teacher is not None:
            return self._pool_crops(rng, hr_size, count, progress)
        return self._degraded(rng, hr_size, count)

    def batch(self, stage: str, index: int, progress: bool = False) -> Batch:
        c = self.config
        rng = np.random.default_rng([c.seed, STAGES.index(stage) + 1, index, self.process])
        if stage == "estimator":
            lr, labels = self.estimator_pool(progress)
            pick = torch.from_numpy(rng.integers(len(lr), size=c.estimator_batch_size))
            x = lr[pick]
            if rng.random() < 0.5:
                x = x.flip(-1)
            x = torch.rot90(x, int(rng.integers(4)), (-2, -1))
            return Batch(x, x, labels[pick])
        if stage == "base":
            return self._sr_pairs(rng, c.hr_size, c.batch_size, progress)
        whole = self._sr_pairs(rng, self.router_size * self.scale, c.mor_batch_size, progress)
        side = c.mor_hr_size // self.scale
        top, left = (int(v) for v in rng.integers(0, self.router_size - side + 1, size=2))
        k = self.scale
        hr = whole.hr[..., top * k : (top + side) * k, left * k : (left + side) * k]
        return Batch(
            whole.lr[..., top : top + side, left : left + side], hr, whole.labels, router_lr=whole.lr
        )


def layout(model: MoRSR, memory_format: torch.memory_format) -> MoRSR:
    """`model` with its 4-D weights in `memory_format` (in place)."""
    # Module.to takes memory_format at run time; torch's stubs do not list it.
    return model.to(memory_format=memory_format)  # type: ignore[call-overload]


def is_grey(photo: np.ndarray) -> bool:
    return bool((photo[..., 0] == photo[..., 1]).all() and (photo[..., 1] == photo[..., 2]).all())


def load_image_pool(folder: str | None) -> list[np.ndarray]:
    """The built-in training photos (with the Debian ones where installed), or every image of
    `folder` (one-line errors for bad files)."""
    if folder is None:
        return list(training_photos().values())
    return list(folder_images(folder).values())


def trainable(model: MoRSR, stage: str) -> list[nn.Parameter]:
    """Set requires_grad for `stage` and return the parameters it trains."""
    adapter_keys = ("lora_A", "lora_B", "gate.")
    for name, p in model.named_parameters():
        is_adapter = any(k in name for k in adapter_keys)
        if stage == "estimator":
            p.requires_grad_(name.startswith("estimator."))
        elif stage == "base":
            p.requires_grad_(name.startswith(("vae.", "unet.")) and not is_adapter)
        else:
            p.requires_grad_(is_adapter)
    return [p for p in model.parameters() if p.requires_grad]


class StageLoss(nn.Module):
    """The loss of one stage as a module, so Accelerate's wrapper (DDP on several GPUs) sees
    every forward and synchronises gradients."""

    def __init__(self, model: MoRSR, stage: str, balance_weight: float) -> None:
        super().__init__()
        self.model, self.stage, self.balance_weight = model, stage, balance_weight

    def forward(
        self, lr: torch.Tensor, hr: torch.Tensor, labels: torch.Tensor, router_lr: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = self.model
        # channels-last activations, as the weights are (`Trainer.run`)
        lr, hr = (t.contiguous(memory_format=torch.channels_last) for t in (lr, hr))
        if router_lr is not None:
            router_lr = router_lr.contiguous(memory_format=torch.channels_last)
        if self.stage == "estimator":
            bce = F.binary_cross_entropy(model.route(lr).clamp(1e-6, 1 - 1e-6), labels)
            return bce, {"bce": bce.detach()}
        if self.stage == "base":
            l2 = F.mse_loss(model(lr, adapters=False), hr)
            return l2, {"l2": l2.detach()}
        with torch.no_grad():
            s = model.route(lr if router_lr is None else router_lr)
        routings = model.routing(s)
        z = model.encode(model.upsample(lr), None)  # routing applied just above
        l2 = F.mse_loss(model.decode(model.denoise(z, None), lr), hr)
        balance = load_balancing_loss(routings, model.estimator.severity(s), alpha=1.0)
        active = routing_stats(routings)["per_image"].mean()
        loss = l2 + self.balance_weight * balance
        return loss, {"l2": l2.detach(), "balance": balance.detach(), "active_experts": active}


def initial_model(preset: str, seed: int, config: TrainConfig | None = None) -> MoRSR:
    """A from-scratch model for training, labelled with its recipe (`config`; a distilled
    model also runs with the colour-step levels it trains with): seeded init, UNet output
    zeroed (x0 starts as z / sqrt(alpha_bar) instead of a 14.6x-amplified random noise
    prediction), the decoder's output zeroed where it is a residual, a moderate CLIP logit
    scale for the learned text embeddings."""
    from .config import PRESETS

    torch.manual_seed(seed)
    label = f"{preset}, trained from scratch by `mor-edge train --seed {seed}`"
    overrides: dict[str, Any] = {}
    if config is not None and config.teacher is not None:
        from .teacher import CREDIT

        flags = f"--teacher {config.teacher} --colour-levels {config.colour_levels}"
        flags += f" --teacher-weight {config.teacher_weight:g}" if config.teacher_weight != 1 else ""
        label = label[:-1] + f" {flags}`, distilled from {CREDIT}"
        overrides["colour_levels"] = config.colour_levels
    model = MoRSR(PRESETS[preset](label=label, **overrides))
    zeroed = [model.unet.conv_out]
    if model.config.residual:  # the skip alone at first: the model starts as bicubic
        zeroed.append(model.vae.decoder.conv_out)
    with torch.no_grad():
        for conv in zeroed:
            base = conv.base if hasattr(conv, "base") else conv
            base.weight.zero_()
            base.bias.zero_()
        model.estimator.logit_scale.fill_(10.0)
    return model


@contextlib.contextmanager
def colour_levels(model: MoRSR, levels: int) -> Iterator[None]:
    """The model's colour step at `levels` for the duration (its own count restored after;
    checkpoints save the model's own)."""
    saved = model.config.colour_levels
    model.config.colour_levels = levels
    try:
        yield
    finally:
        model.config.colour_levels = saved


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
    """Optimizer tensors to safetensors; returns the non-tensor part for the JSON state."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    write_weights_file(path, tensors)
    return {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path, meta: dict[str, Any]) -> None:
    tensors = load_file(str(path))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class Trainer:
    def __init__(self, model: MoRSR, config: TrainConfig, out: Path, progress: bool = True) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.model, self.config, self.out, self.progress = model, config, Path(out), progress
        self.data = TrainingData(
            config,
            model.config.degradation_names,
            model.estimator.image_size,
            model.config.scale,
            self.accelerator.process_index,
        )
        self.state: dict[str, Any] = {"stage": STAGES[0], "step": 0, "done": []}
        self.model_levels = model.config.colour_levels

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.accelerator.is_main_process:
            return
        ckpt = self.out / "checkpoint"
        tmp = self.out / "checkpoint.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        with colour_levels(model, self.model_levels):  # the model's own, not the training one
            model.save_pretrained(tmp)
        meta = save_optimizer(optimizer, tmp / OPTIMIZER_NAME)
        state = {**self.state, "optimizer": meta, "train_config": dataclasses.asdict(self.config)}
        (tmp / STATE_NAME).write_text(json.dumps(state, indent=2))
        if ckpt.exists():
            for p in ckpt.iterdir():
                p.unlink()
            ckpt.rmdir()
        tmp.rename(ckpt)

    def resume_state(self) -> dict[str, Any] | None:
        path = self.out / "checkpoint" / STATE_NAME
        return json.loads(path.read_text()) if path.is_file() else None

    # -- loop -------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with (self.out / "log.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    def run(self) -> MoRSR:
        self.out.mkdir(parents=True, exist_ok=True)
        mark(self.out, "training run")  # `train --fresh` deletes only folders that have it
        resumed = self.resume_state()
        if resumed is not None:
            self.state = {k: resumed[k] for k in ("stage", "step", "done")}
        torch.manual_seed(self.config.seed + self.state["step"])
        # Channels-last convolutions (oneDNN's native layout) make a base step faster on this
        # CPU: 0.375 against 0.40 s on a fast day, 0.41 against 0.68 s on a slow one (README).
        # The model is handed back contiguous.
        layout(self.model, torch.channels_last)
        self.log(
            {
                "event": "start",
                "resumed_from": resumed and resumed["step"],
                "perceptual_loss": "none (no offline weights); L2 only",
                "config": dataclasses.asdict(self.config),
            }
        )
        for stage in STAGES:
            if stage in self.state["done"] or self.config.steps(stage) == 0:
                continue
            self.state["stage"] = stage
            with colour_levels(self.model, self.config.colour_levels):
                self._run_stage(stage, resumed if resumed and resumed["stage"] == stage else None)
            resumed = None
        model = layout(self.accelerator.unwrap_model(self.model), torch.contiguous_format)
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()

    def _run_stage(self, stage: str, resumed: dict[str, Any] | None) -> None:
        c = self.config
        base_lr = {"estimator": c.estimator_lr, "base": c.lr, "mor": c.mor_lr}[stage]
        params = trainable(self.model, stage)
        optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=0.0)
        total = c.steps(stage)
        start = 0
        if resumed is not None:
            load_optimizer(optimizer, self.out / "checkpoint" / OPTIMIZER_NAME, resumed["optimizer"])
            start = int(resumed["stage_step"])
        loss_module, optimizer = self.accelerator.prepare(
            StageLoss(self.model, stage, c.balance_weight), optimizer
        )
        loss_module.train()
        bar = tqdm(
            range(start, total),
            desc=f"train {stage}",
            disable=not self.progress,
            unit="step",
            initial=start,
            total=total,
        )
        t0 = time.perf_counter()
        for step in bar:
            for group in optimizer.param_groups:  # cosine decay with a short warm-up
                warm = min(1.0, (step + 1) / 50)
                group["lr"] = base_lr * warm * 0.5 * (1 + math.cos(math.pi * step / total))
            device = self.accelerator.device
            b = self.data.batch(stage, step, self.progress)
            router_lr = None if b.router_lr is None else b.router_lr.to(device)
            loss, parts = loss_module(b.lr.to(device), b.hr.to(device), b.labels.to(device), router_lr)
            optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            self.accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            self.state["step"] += 1
            self.state["stage_step"] = step + 1
            values = {k: float(v) for k, v in parts.items()}
            bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
            if (step + 1) % c.log_every == 0 or step + 1 == total:
                self.log(
                    {
                        "stage": stage,
                        "step": self.state["step"],
                        "stage_step": step + 1,
                        "lr": optimizer.param_groups[0]["lr"],
                        "seconds": time.perf_counter() - t0,
                        **values,
                    }
                )
            if (step + 1) % c.checkpoint_every == 0 and step + 1 < total:
                self.save_checkpoint(optimizer)
        self.state["done"].append(stage)
        self.state["stage_step"] = 0
        self.save_checkpoint(optimizer)
