"""Degradation-stratified calibration sampling and stage-input capture.

A pool of degraded crops is drawn (severities cycling mild, moderate, severe) and scored by
the reference router. Buckets then take turns picking the pool sample nearest their centre,
so every static bucket gets the same number of calibration samples even where the model's
scores never fall in it naturally (coverage reports both counts). Each sample's stage inputs
are captured by running the reference under its bucket's routing (static), its own routing
(dynamic) or with adapters off (base).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mor_edge.data import degraded_pairs
from mor_edge.errors import UserError
from mor_edge.model import MoRSR, model_fingerprint
from mor_edge.routing import Buckets, apply_routing, clear_routing

from .calibration_set import CalibrationSet
from .recipe_schema import FORMAT_VERSION

CAPTURE_ROUTINGS = ("static", "dynamic", "base")
POOL_FACTOR = 4  # pool draws per calibration sample
BATCH = 8


def stratified_choice(s: np.ndarray, centres: np.ndarray, count: int) -> tuple[list[int], list[int]]:
    """Buckets take turns taking the untaken pool row nearest their centre (float64 squared
    distance, ties to the lower row). Returns the chosen rows and the bucket that took each."""
    if count > len(s):
        raise ValueError(f"cannot choose {count} of {len(s)} pool samples")
    d = ((s.astype(np.float64)[:, None, :] - centres.astype(np.float64)[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=0, kind="stable")
    cursor = [0] * len(centres)
    taken: set[int] = set()
    rows: list[int] = []
    owners: list[int] = []
    while len(rows) < count:
        for b in range(len(centres)):
            if len(rows) == count:
                break
            while int(order[cursor[b], b]) in taken:
                cursor[b] += 1
            row = int(order[cursor[b], b])
            taken.add(row)
            rows.append(row)
            owners.append(b)
    return rows, owners


@torch.no_grad()
def expert_coverage(model: MoRSR, s: torch.Tensor) -> dict[str, Any]:
    """Per MoR layer, the share of its routed experts that at least one sample selects."""
    routings = apply_routing(model.layers(), s)
    clear_routing(model.layers())
    shares = {}
    for name, r in routings.items():
        used = set(r.indices[r.indices < r.routed].tolist())
        shares[name] = len(used) / r.routed
    values = np.asarray(list(shares.values()))
    return {
        "min": float(values.min()),
        "mean": float(values.mean()),
        "layers_fully_covered": int((values == 1.0).sum()),
        "layers": len(values),
    }


def coverage(cset: CalibrationSet, model: MoRSR) -> dict[str, Any]:
    """Samples per static bucket (calibrating it, and falling in it by their own scores), pool
    counts, and routed-expert coverage for dynamic routing."""
    n_buckets = len(cset.recipe["buckets"])
    return {
        "buckets": [
            {
                "bucket": b,
                "samples": int((cset.bucket == b).sum()),
                "natural": int((cset.natural_bucket == b).sum()),
                "pool_natural": int(cset.recipe["pool_natural"][b]),
            }
            for b in range(n_buckets)
        ],
        "buckets_covered": len(set(cset.bucket.tolist())),
        "buckets_total": n_buckets,
        "experts": expert_coverage(model, cset.s),
    }


@torch.no_grad()
def _capture(
    model: MoRSR, lr: torch.Tensor, s: torch.Tensor, buckets: Buckets, routing: str
) -> dict[str, torch.Tensor]:
    if routing == "static":
        out = model.run_stages(lr, s, buckets)
    elif routing == "dynamic":
        out = model.run_stages(lr, s)
    else:
        out = model.run_stages(lr, s, adapters=False)
    return {"latent": out[1], "x0": out[2]}


@torch.no_grad()
def build_calibration_set(
    model: MoRSR,
    samples: int = 64,
    seed: int = 0,
    bucket_levels: int = 2,
    routings: tuple[str, ...] = ("static", "dynamic"),
    images: dict[str, np.ndarray] | None = None,
    progress: bool = True,
) -> CalibrationSet:
    """Draw, score, stratify and capture a calibration set (built-in training photos unless
    `images` are given)."""
    unknown = set(routings) - set(CAPTURE_ROUTINGS)
    if unknown or not routings:
        raise UserError(f"routing must be among {', '.join(CAPTURE_ROUTINGS)}")
    k = len(model.config.prompt_pairs)
    buckets = Buckets.grid(bucket_levels, k)
    if samples < len(buckets):
        raise UserError(
            f"{samples} samples cannot cover {len(buckets)} buckets; use --samples {len(buckets)} or more"
        )
    model.eval()
    pool_size = POOL_FACTOR * samples
    pool = degraded_pairs(
        model.config.sr_size, pool_size, seed, subset="train", pool=list(images.values()) if images else None
    )
    batches = range(0, pool_size, BATCH)
    s_pool = torch.cat(
        [model.route(pool.lr[i : i + BATCH]) for i in tqdm(batches, desc="score pool", disable=not progress)]
    )
    centres = buckets.centres.numpy()
    rows, owners = stratified_choice(s_pool.numpy(), centres, samples)
    lr, s = pool.lr[rows], s_pool[rows]
    owner = torch.tensor(owners, dtype=torch.int64)
    natural_pool = buckets.assign(s_pool)
    captured: dict[str, dict[str, torch.Tensor]] = {}
    for routing in routings:
        parts: list[dict[str, torch.Tensor]] = []
        for i in tqdm(range(0, samples, BATCH), desc=f"capture {routing}", disable=not progress):
            s_in = buckets.centres[owner[i : i + BATCH]] if routing == "static" else s[i : i + BATCH]
            parts.append(_capture(model, lr[i : i + BATCH], s_in, buckets, routing))
        captured[routing] = {key: torch.cat([p[key] for p in parts]) for key in ("latent", "x0")}
    recipe = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "samples": samples,
        "pool_size": pool_size,
        "images": sorted(images) if images else "built-in training photos",
        "severities": "cycling mild, moderate, severe over the pool",
        "sr_size": model.config.sr_size,
        "model_hash": model_fingerprint(model),
        "model_name": model.config.name,
        "bucket_levels": bucket_levels,
        "buckets": buckets.to_list(),
        "pool_natural": np.bincount(natural_pool.numpy(), minlength=len(buckets)).tolist(),
        "routings": list(routings),
    }
    return CalibrationSet(
        recipe=recipe,
        lr=lr.contiguous(),
        s=s.contiguous(),
        bucket=owner,
        natural_bucket=buckets.assign(s),
        captured=captured,
    )
