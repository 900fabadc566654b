"""Routing on bucketed s, routing statistics and the degradation-aware balance loss."""

from __future__ import annotations

import torch
from torch import nn

from mor_edge.config import MoRConfig
from mor_edge.mor_layers import MoRLinear
from mor_edge.routing import (
    Buckets,
    apply_routing,
    load_balancing_loss,
    route_layer,
    route_logits,
    routing_stats,
)

CFG = MoRConfig(rank=12, shared=4, zero_slots=4, top_k=4, alpha=12.0)


def layers(n: int = 3) -> dict[str, MoRLinear]:
    torch.manual_seed(0)
    return {f"l{i}": MoRLinear(nn.Linear(8, 8), CFG, 4) for i in range(n)}


def test_bucket_grid_and_assignment() -> None:
    b = Buckets.grid(2, 4)
    assert len(b) == 16
    centres = b.centres
    assert torch.equal(b.assign(centres), torch.arange(16))
    assert torch.equal(b.snap(centres + 0.2), centres)  # 0.2 < half a cell: same bucket
    assert set(torch.unique(b.centres).tolist()) == {0.25, 0.75}


def test_routing_is_constant_inside_a_bucket() -> None:
    ls = layers()
    buckets = Buckets.grid(2, 4)
    g = torch.Generator().manual_seed(0)
    # Many points in the cell around centre (0.25, 0.75, 0.25, 0.75): each coordinate within 0.25.
    centre = torch.tensor([0.25, 0.75, 0.25, 0.75])
    s = centre + (torch.rand(64, 4, generator=g) - 0.5) * 0.49
    assert (buckets.assign(s) == buckets.assign(centre[None])).all()
    routed = apply_routing(ls, s, buckets)
    exact = apply_routing(ls, s)
    for name, r in routed.items():
        assert (r.indices == r.indices[0]).all(), name
        assert torch.equal(r.weights, r.weights[:1].expand_as(r.weights))
    # without buckets the same inputs do not all route alike
    assert any(not (r.indices == r.indices[0]).all() for r in exact.values())


def test_stacked_gates_route_as_each_layer_alone() -> None:
    """`apply_routing` computes every gate in one matmul and top-k: the same selections and
    weights as each layer's own gate."""
    ls = layers(5)
    s = torch.rand(16, 4, generator=torch.Generator().manual_seed(2))
    for name, got in apply_routing(ls, s).items():
        want = route_layer(ls[name], s)
        assert torch.equal(got.indices, want.indices), name
        torch.testing.assert_close(got.weights, want.weights, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.probs, want.probs, rtol=0, atol=1e-6)


def test_routing_stats_count_real_experts() -> None:
    logits = torch.tensor([[9.0, 8, 7, 6] + [0] * 8 + [-1, -2, -3, -4], [5.0] * 0 + [0] * 12 + [9, 8, 7, 6]])
    r = route_logits(logits, top_k=4, routed=CFG.routed)
    assert r.active_experts().tolist() == [4, 0]
    stats = routing_stats({"a": r, "b": r})
    assert stats["per_image"].tolist() == [4.0, 0.0]
    assert stats["per_layer"].tolist() == [2.0, 2.0]


def test_balance_loss_weighs_zero_slots_more_as_severity_rises() -> None:
    torch.manual_seed(0)
    # Every image selects two zero slots and two real experts.
    logits = torch.zeros(4, CFG.slots)
    logits[:, [0, 1, CFG.routed, CFG.routed + 1]] = 3.0
    losses, grads = [], []
    for severity in (0.1, 0.5, 0.9):
        lg = logits.clone().requires_grad_(True)
        r = route_logits(lg, CFG.top_k, CFG.routed)
        loss = load_balancing_loss({"x": r}, torch.full((4,), severity), alpha=1.0)
        loss.backward()
        losses.append(loss.item())
        grads.append(lg.grad[:, CFG.routed].mean().item())  # push on a selected zero slot
    assert losses[0] < losses[1] < losses[2]
    assert grads[0] < grads[1] < grads[2]
    # With no zero slot selected, severity changes nothing.
    logits2 = torch.zeros(4, CFG.slots)
    logits2[:, :4] = 3.0
    r2 = route_logits(logits2, CFG.top_k, CFG.routed)
    low = load_balancing_loss({"x": r2}, torch.full((4,), 0.1))
    high = load_balancing_loss({"x": r2}, torch.full((4,), 0.9))
    assert high.item() == low.item()
