"""The one routing path: degradation vector `s` -> per-layer top-k selection -> rank weights.

Training, evaluation and export all call `apply_routing`. Static export routes on a
bucketed `s` (`Buckets.snap`), so the reference can reproduce a static artifact exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .mor_layers import MoRLayer
from .stage_contract import nearest_centre

ROUTING_FORMS = ("dense", "gather", "fold")


@dataclass
class Routing:
    """One layer's routing for a batch: selected slots, their weights, all gate probabilities."""

    indices: torch.Tensor  # (N, k) long, slot ids in [0, E + Z)
    weights: torch.Tensor  # (N, k) softmax over the selected logits
    probs: torch.Tensor  # (N, E + Z) softmax over all logits (for the balance loss)
    routed: int  # E: slots >= E are zero slots

    def active_experts(self) -> torch.Tensor:
        """Number of real (non-zero-slot) experts selected per image, shape (N,)."""
        return (self.indices < self.routed).sum(dim=1)


def route_logits(logits: torch.Tensor, top_k: int, routed: int) -> Routing:
    """Top-k over gate logits; softmax over the selected ones."""
    top, idx = torch.topk(logits, top_k, dim=-1)
    return Routing(
        indices=idx, weights=torch.softmax(top, dim=-1), probs=torch.softmax(logits, dim=-1), routed=routed
    )


def rank_weights(routing: Routing, shared: int) -> torch.Tensor:
    """Per-image weights of all R ranks: 1 for shared ranks, g_i for selected routed ranks."""
    n, slots = routing.probs.shape
    dense = torch.zeros(n, slots, dtype=routing.weights.dtype, device=routing.weights.device)
    dense = dense.scatter(1, routing.indices, routing.weights)
    ones = torch.ones(n, shared, dtype=dense.dtype, device=dense.device)
    return torch.cat([ones, dense[:, : routing.routed]], dim=1)


def mor_layers(module: torch.nn.Module) -> dict[str, MoRLayer]:
    """Every MoR layer under `module`, by qualified name."""
    return {name: m for name, m in module.named_modules() if isinstance(m, MoRLayer)}


def route_layer(layer: MoRLayer, s: torch.Tensor) -> Routing:
    return route_logits(layer.gate(s.to(layer.gate.weight.dtype)), layer.top_k, layer.routed)


def apply_routing(
    layers: Mapping[str, MoRLayer],
    s: torch.Tensor,
    buckets: Buckets | None = None,
    form: str = "dense",
) -> dict[str, Routing]:
    """Route every layer on `s` (snapped to its bucket centre if `buckets` is given) and hand
    the result to each layer in one of the equivalent forms of `ROUTING_FORMS`: "dense" rank
    weights, or the selected indices applied on activations ("gather") or folded into a
    per-image weight ("fold"). Returns the routing per layer."""
    if form not in ROUTING_FORMS:
        raise ValueError(f"form must be one of {ROUTING_FORMS}")
    if buckets is not None:
        s = buckets.snap(s)
    routings: dict[str, Routing] = {}
    for name, layer in layers.items():
        routing = route_layer(layer, s)
        if form == "dense":
            layer.set_rank_weights(rank_weights(routing, layer.shared))
        else:
            layer.set_selection(routing.indices, routing.weights, fold=form == "fold")
        routings[name] = routing
    return routings


def clear_routing(layers: Mapping[str, MoRLayer]) -> None:
    for layer in layers.values():
        layer.set_rank_weights(None)


class Buckets:
    """A partition of the degradation space by nearest centre (static export's buckets)."""

    def __init__(self, centres: torch.Tensor) -> None:
        if centres.dim() != 2 or centres.shape[0] < 1:
            raise ValueError(f"bucket centres must be (B, K) with B >= 1, got {tuple(centres.shape)}")
        self.centres = centres.float()

    def __len__(self) -> int:
        return self.centres.shape[0]

    @classmethod
    def grid(cls, levels: int, dims: int) -> Buckets:
        """`levels` evenly spaced cell centres per dimension: levels**dims buckets."""
        if levels < 1:
            raise ValueError("levels must be >= 1")
        axis = [(i + 0.5) / levels for i in range(levels)]
        return cls(torch.tensor(list(itertools.product(axis, repeat=dims))))

    def assign(self, s: torch.Tensor) -> torch.Tensor:
        """Index of the nearest centre per row of `s`, shape (N,), by `nearest_centre`."""
        idx = nearest_centre(s.detach().cpu().numpy(), self.centres.numpy())
        return torch.from_numpy(idx).to(s.device)

    def snap(self, s: torch.Tensor) -> torch.Tensor:
        return self.centres.to(device=s.device, dtype=s.dtype)[self.assign(s)]

    def to_list(self) -> list[list[float]]:
        return self.centres.tolist()


def routing_stats(routings: Mapping[str, Routing]) -> dict[str, torch.Tensor]:
    """Active real experts: `per_layer` (L,) mean over images, `per_image` (N,) mean over layers."""
    active = torch.stack([r.active_experts().float() for r in routings.values()], dim=1)  # (N, L)
    return {"per_layer": active.mean(dim=0), "per_image": active.mean(dim=1)}


def load_balancing_loss(
    routings: Mapping[str, Routing], severity: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """Degradation-aware balance loss, averaged over layers.

    ``L = N_slots * sum_i f_i * mean_n(alpha_{n,i} p_{n,i})`` with f_i the fraction of
    selections of slot i in the batch and p the gate probabilities. alpha is `alpha` for real
    experts and `severity_n * alpha` for zero slots, so zero slots cost more the more
    degraded the image, pushing hard inputs towards real experts.
    """
    losses = []
    for r in routings.values():
        n, slots = r.probs.shape
        counts = torch.zeros(slots, device=r.probs.device).index_add_(
            0, r.indices.reshape(-1), torch.ones(r.indices.numel(), device=r.probs.device)
        )
        f = counts / r.indices.numel()
        coeff = torch.full((n, slots), alpha, device=r.probs.device, dtype=r.probs.dtype)
        coeff[:, r.routed :] = alpha * severity.reshape(n, 1).to(r.probs.dtype)
        losses.append(slots * (f * (coeff * r.probs).mean(dim=0)).sum())
    return torch.stack(losses).mean()
