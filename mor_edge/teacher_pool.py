"""The distillation pool: degraded LR crops, their HR crops and the teacher's SR of each LR,
made once and kept in the user cache.

The teacher costs about 10x the student per pixel, so it runs once per pool item, never per
training step: training cuts many small crops from each (larger) item. Items are made in
chunks, each written atomically as safetensors (uint8 LR, HR and teacher SR; float labels), so
an interrupted build resumes where it stopped and a pool is shared by every run with the same
key (teacher weights, seed, sizes, content). Chunks are always whole and item `i` depends only
on (seed, i), so a pool of N items is the first N items of a larger one and reuses its chunks.
The student sees what the teacher saw: the LR is quantised to 8 bits before the teacher runs,
as a real photo would be.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import random_crop
from .degradations import SEVERITIES, degrade
from .errors import UserError
from .model_folder import read_weights_file, write_weights_file
from .teacher import RRDBNet, teacher_folder

CHUNK = 16
LEVELS = tuple(SEVERITIES)


@dataclass(frozen=True)
class PoolSpec:
    """What a pool holds; its hash names the pool's folder."""

    items: int
    lr_size: int  # side of an item's LR crop (the teacher's input)
    scale: int
    seed: int
    content: str  # a digest of the images the HR crops are cut from
    teacher: str  # the teacher weights' sha256

    @property
    def key(self) -> str:
        spec = {k: v for k, v in self.__dict__.items() if k != "items"}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def content_digest(images: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for image in images:
        digest.update(str(image.shape).encode())
        digest.update(hashlib.sha256(np.ascontiguousarray(image).data).digest())
    return digest.hexdigest()[:16]


def pool_folder(spec: PoolSpec) -> Path:
    return teacher_folder().parent.parent / "teacher-pools" / spec.key


def quantise(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def make_chunk(
    spec: PoolSpec, chunk: int, images: list[np.ndarray], teacher: RRDBNet, names: list[str]
) -> dict[str, torch.Tensor]:
    rngs = [np.random.default_rng([spec.seed, chunk * CHUNK + j]) for j in range(CHUNK)]
    hr = torch.stack(
        [random_crop(images[int(r.integers(len(images)))], spec.lr_size * spec.scale, r) for r in rngs]
    )
    levels = [LEVELS[int(r.integers(len(LEVELS)))] for r in rngs]
    lr, params = degrade(hr, seed=spec.seed * 1_000_003 + chunk, severity=levels)
    lr8 = quantise(lr)
    sr = teacher.upscale(lr8.float().div(255).contiguous(memory_format=torch.channels_last))
    labels = torch.tensor([[p.labels()[n] for n in names] for p in params], dtype=torch.float32)
    return {"lr": lr8, "hr": quantise(hr), "teacher": quantise(sr), "labels": labels}


def build_pool(
    spec: PoolSpec, images: list[np.ndarray], names: list[str], progress: bool = True
) -> dict[str, torch.Tensor]:
    """The pool's tensors, made (or completed) first where the cache lacks chunks."""
    folder = pool_folder(spec)
    folder.mkdir(parents=True, exist_ok=True)
    described = {k: v for k, v in spec.__dict__.items() if k != "items"}  # what the key covers
    (folder / "spec.json").write_text(json.dumps({**described, "names": names}, indent=2))
    chunks = (spec.items + CHUNK - 1) // CHUNK
    missing = [c for c in range(chunks) if not (folder / f"chunk-{c:05d}.safetensors").is_file()]
    teacher = None
    if missing:
        from .teacher import load_teacher

        teacher = load_teacher().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for c in tqdm(missing, desc="teacher pool", unit="chunk", disable=not progress):
        assert teacher is not None
        tensors = make_chunk(spec, c, images, teacher, names)
        tmp = folder / f".chunk-{c:05d}.tmp-{os.getpid()}"  # two builders never share a file
        write_weights_file(tmp, tensors)
        tmp.rename(folder / f"chunk-{c:05d}.safetensors")
    parts = [read_weights_file(folder / f"chunk-{c:05d}.safetensors") for c in range(chunks)]
    pool = {k: torch.cat([p[k] for p in parts])[: spec.items] for k in parts[0]}
    if pool["lr"].shape[0] != spec.items:
        raise UserError(f"{folder}: the pool holds {pool['lr'].shape[0]} items, {spec.items} expected")
    return pool


def pool_spec(items: int, lr_size: int, scale: int, seed: int, images: list[np.ndarray]) -> PoolSpec:
    from .export.manifest import sha256_file
    from .teacher import WEIGHTS

    weights = teacher_folder() / WEIGHTS
    if not weights.is_file():
        from .teacher import convert_teacher

        convert_teacher()
    return PoolSpec(items, lr_size, scale, seed, content_digest(images), sha256_file(weights))
