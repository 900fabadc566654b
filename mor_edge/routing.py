"""The one routing path: degradation vector `s` -> per-layer top-k selection -> rank weights.

Training, evaluation and export all call `apply_routing`. Static export routes on a
bucketed `s` (`Buckets.snap`), so the reference can reproduce a static artifact exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .mor_layers import MoRLayer
from .stage_contract import nearest_centre

ROUTING_FORMS = ("dense", "gather", "fold")
# `fold_layers` adds a group's base weights as one stacked constant up to this size, each
# layer's on its own above it: ONNX Runtime folds no constant over 1 GiB at load, and an SD
# 2.1 UNet's 1280-channel convolutions stacked (1.18 GB) were copied on every call.
STACKED_BASE_BYTES = 64 * 2**20


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

    def layer(self, i: int) -> Routing:
        """Layer `i` of a stacked routing (tensors (N, layers, ...))."""
        return Routing(self.indices[:, i], self.weights[:, i], self.probs[:, i], self.routed)


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
    """One layer's routing on its own: what `stacked_routing` computes for many layers."""
    return route_logits(layer.gate(s.to(layer.gate.weight.dtype)), layer.top_k, layer.routed)


def stacked_routing(layers: Sequence[MoRLayer], s: torch.Tensor) -> Routing:
    """`route_layer` for every layer at once, tensors (N, layers, ...): the gates stacked into
    one matmul, one top-k and one softmax. The same numbers; an exported graph pays per op,
    and a stage has dozens of routed layers (the tiny UNet 73), each with its own gate."""
    first = layers[0]  # one MoRConfig per model: every layer has the same slots and top-k
    weight = torch.cat([m.gate.weight for m in layers])
    bias = torch.cat([m.gate.bias for m in layers])
    logits = F.linear(s.to(weight.dtype), weight, bias).reshape(s.shape[0], len(layers), -1)
    return route_logits(logits, first.top_k, first.routed)


def fold_layers(layers: Sequence[MoRLayer], routing: Routing) -> None:
    """Give every layer its per-image folded weight (the "fold" form) from a stacked routing.
    Layers with the same weight shape are folded together: one gather of A's rows, one of B's,
    one batched matmul and (up to `STACKED_BASE_BYTES` of base weights) one add per shape
    instead of per layer (the tiny UNet's 73 routed layers have 17 shapes, the encoder's 16
    have 9)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(layers):  # int(): a traced size is a tensor, hashed by identity
        groups.setdefault((int(m.lora_B.shape[0]), int(m.lora_A[0].numel())), []).append(i)
    for (out, size), members in groups.items():
        tables = [layers[i].slot_factors() for i in members]
        slots = tables[0][0].shape[0]
        # row of each selection in the group's stacked tables: slot + member * slots
        offsets = torch.arange(len(members), device=routing.indices.device)[:, None] * slots
        rows = routing.indices[:, members] + offsets  # (N, L, k)
        a = torch.cat([t[0] for t in tables])[rows]  # (N, L, k, size)
        b = torch.cat([t[1] for t in tables])[rows] * routing.weights[:, members, :, None].to(a.dtype)
        delta = b.transpose(-1, -2) @ a  # (N, L, out, size)
        bases = [layers[i].shared_weight().reshape(out, size) for i in members]
        if int(sum(w.numel() * w.element_size() for w in bases)) <= STACKED_BASE_BYTES:
            weights = list((torch.stack(bases) + delta).unbind(1))
        else:
            weights = [w + d for w, d in zip(bases, delta.unbind(1), strict=True)]
        for i, weight in zip(members, weights, strict=True):
            layers[i].set_folded(weight)


def apply_routing(
    layers: Mapping[str, MoRLayer],
    s: torch.Tensor,
    buckets: Buckets | None = None,
    form: str = "dense",
) -> dict[str, Routing]:
    """Route every layer on `s` (snapped to its bucket centre if `buckets` is given) and hand
    the result to each layer in one of the equivalent forms of `ROUTING_FORMS`: "dense" rank
    weights, or the selected indices applied on activations ("gather") or folded into a
    per-image weight ("fold", `fold_layers`). The gates are computed together
    (`stacked_routing`). Returns the routing per layer."""
    if form not in ROUTING_FORMS:
        raise ValueError(f"form must be one of {ROUTING_FORMS}")
    if buckets is not None:
        s = buckets.snap(s)
    if not layers:
        return {}
    members = list(layers.values())
    stacked = stacked_routing(members, s)
    routings = {name: stacked.layer(i) for i, name in enumerate(layers)}
    if form == "fold":
        fold_layers(members, stacked)
    for name, layer in layers.items():
        if form == "dense":
            layer.set_rank_weights(rank_weights(routings[name], layer.shared))
        elif form == "gather":
            layer.set_selection(routings[name].indices, routings[name].weights)
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
