"""Routing plans: which expert masks a static export folds into its weights.

A static plan routes every bucket centre through every layer of a routed stage, and groups
buckets whose masks are identical in that stage: each group becomes one exported variant,
so a stage has as many graphs as it has distinct masks, not as many as buckets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from mor_edge.model import MoRSR
from mor_edge.mor_layers import MoRLayer
from mor_edge.routing import Buckets, apply_routing, clear_routing

DEFAULT_LEVELS = 2


def default_buckets(model: MoRSR, levels: int = DEFAULT_LEVELS) -> Buckets:
    """A grid with `levels` cells per degradation score (2: mild/severe per kind)."""
    return Buckets.grid(levels, len(model.config.prompt_pairs))


@dataclass
class Variant:
    """One folded expert mask of a stage and the buckets that use it."""

    buckets: list[int]
    rank_weights: dict[str, torch.Tensor]  # layer name -> (R,)


@dataclass
class StaticPlan:
    buckets: Buckets
    variants: dict[str, list[Variant]]  # stage -> variants

    def bucket_variant(self, stage: str) -> list[int]:
        """Variant index of each bucket for `stage`."""
        table = [0] * len(self.buckets)
        for v, variant in enumerate(self.variants[stage]):
            for b in variant.buckets:
                table[b] = v
        return table


def stage_layers(model: MoRSR, stage: str) -> dict[str, MoRLayer]:
    return model.encoder_layers() if stage == "encoder" else model.unet_layers()


@torch.no_grad()
def static_plan(model: MoRSR, buckets: Buckets) -> StaticPlan:
    variants: dict[str, list[Variant]] = {}
    for stage in ("encoder", "unet"):
        layers = stage_layers(model, stage)
        apply_routing(layers, buckets.centres)
        weights = {name: layer.rank_weights for name, layer in layers.items()}
        clear_routing(layers)
        groups: dict[bytes, Variant] = {}
        for b in range(len(buckets)):
            per_layer = {name: w[b].clone() for name, w in weights.items() if w is not None}
            key = b"".join(w.numpy().tobytes() for w in per_layer.values())
            groups.setdefault(key, Variant([], per_layer)).buckets.append(b)
        variants[stage] = list(groups.values())
    return StaticPlan(buckets, variants)


@contextlib.contextmanager
def folded(layers: Mapping[str, MoRLayer], rank_weights: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Merge a fixed mask into every layer for the duration (exactly restored afterwards)."""
    clear_routing(layers)
    merged = []
    try:
        for name, layer in layers.items():
            layer.merge(rank_weights[name])
            merged.append(layer)
        yield
    finally:
        for layer in merged:
            layer.unmerge()


@contextlib.contextmanager
def sliced(layers: Mapping[str, MoRLayer], centre: torch.Tensor) -> Iterator[None]:
    """A bucket's fixed selection for targets that share base weights across buckets: the S
    shared ranks folded into every base weight (identical for all buckets), the selected real
    experts kept as a small LoRA branch (zero slots dropped), constants once traced."""
    with torch.no_grad():
        routings = apply_routing(layers, centre[None], form="gather")
    clear_routing(layers)
    merged = []
    try:
        for name, layer in layers.items():
            layer.merge_shared()
            merged.append(layer)
            r = routings[name]
            real = r.indices[0] < layer.routed
            if bool(real.any()):
                layer.set_selection(r.indices[:, real], r.weights[:, real].detach())
        yield
    finally:
        clear_routing(layers)
        for layer in merged:
            layer.unmerge()
