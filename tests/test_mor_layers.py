"""MoR layers against plain LoRA, PEFT, the per-expert formula, and their merged form."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from mor_edge import routing as routing_module
from mor_edge.config import MoRConfig
from mor_edge.mor_layers import MoRConv2d, MoRLayer, MoRLinear
from mor_edge.routing import apply_routing, rank_weights, route_layer

CFG = MoRConfig(rank=10, shared=3, zero_slots=3, top_k=4, alpha=7.0)
K = 4  # gate inputs


def make_layer(kind: str) -> tuple[MoRLayer, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "linear":
        layer: MoRLayer = MoRLinear(nn.Linear(12, 9), CFG, K)
        x = torch.randn(3, 5, 12)
    else:
        layer = MoRConv2d(nn.Conv2d(6, 8, 3, stride=2, padding=1), CFG, K)
        x = torch.randn(3, 6, 11, 11)
    nn.init.normal_(layer.lora_B, std=0.5)  # B is zero at init; make the adapter visible
    return layer, x


def plain_lora(layer: MoRLayer, x: torch.Tensor) -> torch.Tensor:
    """W x + alpha/R * B A x, written out directly."""
    if isinstance(layer, MoRLinear):
        return layer.base(x) + CFG.scale * (x @ layer.lora_A.T @ layer.lora_B.T)
    b = layer.base
    h = nn.functional.conv2d(x, layer.lora_A, None, b.stride, b.padding, b.dilation)
    return b(x) + CFG.scale * nn.functional.conv2d(h, layer.lora_B)


def expert_output(layer: MoRLayer, x: torch.Tensor, i: int) -> torch.Tensor:
    """Output of rank-1 expert i alone (b_i a_i^T x), unscaled."""
    w = torch.zeros(x.shape[0], CFG.rank)
    w[:, i] = 1
    return layer.adapter_output(x, w) / CFG.scale


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_all_experts_on_equals_plain_lora(kind: str) -> None:
    layer, x = make_layer(kind)
    layer.set_rank_weights(torch.ones(x.shape[0], CFG.rank))
    torch.testing.assert_close(layer(x), plain_lora(layer, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_all_experts_on_equals_peft(kind: str) -> None:
    layer, x = make_layer(kind)
    host = nn.Sequential()
    host.add_module("target", layer.base)
    peft_model = get_peft_model(host, LoraConfig(r=CFG.rank, lora_alpha=CFG.alpha, target_modules=["target"]))
    peft_layer = peft_model.base_model.model.target
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
        peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    layer.set_rank_weights(torch.ones(x.shape[0], CFG.rank))
    with torch.no_grad():
        expected = peft_model(x)
        got = layer(x)
    assert (got - layer.base(x)).abs().max() > 1e-2  # the adapter really contributes
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_routed_output_matches_expert_formula(kind: str) -> None:
    """y = W x + scale * (sum_shared e_i + sum_{selected, i<E} g_i e_i): zero slots add nothing."""
    layer, x = make_layer(kind)
    s = torch.rand(x.shape[0], K)
    routing = route_layer(layer, s)
    assert routing.indices.shape == (x.shape[0], CFG.top_k)
    assert all(len(set(row.tolist())) == CFG.top_k for row in routing.indices)
    layer.set_rank_weights(rank_weights(routing, CFG.shared))
    got = layer(x)
    for n in range(x.shape[0]):
        xn = x[n : n + 1]
        want = layer.base(xn)
        for i in range(CFG.shared):
            want = want + CFG.scale * expert_output(layer, xn, i)
        for slot, g in zip(routing.indices[n].tolist(), routing.weights[n].tolist(), strict=True):
            if slot < CFG.routed:
                want = want + CFG.scale * g * expert_output(layer, xn, CFG.shared + slot)
        torch.testing.assert_close(got[n : n + 1], want, rtol=0, atol=1e-5)


def test_zero_slots_add_nothing_and_shared_always_contribute() -> None:
    layer, x = make_layer("linear")
    with torch.no_grad():  # force the gate to prefer the zero slots for every input
        layer.gate.weight.zero_()
        layer.gate.bias.copy_(torch.tensor([0.0] * CFG.routed + [5.0] * CFG.zero_slots))
    cfg_k3 = MoRConfig(rank=10, shared=3, zero_slots=3, top_k=3, alpha=7.0)
    layer.top_k = cfg_k3.top_k
    routing = route_layer(layer, torch.rand(x.shape[0], K))
    assert (routing.indices >= CFG.routed).all()
    assert routing.active_experts().tolist() == [0] * x.shape[0]
    layer.set_rank_weights(rank_weights(routing, CFG.shared))
    shared_only = sum(expert_output(layer, x, i) for i in range(CFG.shared))
    torch.testing.assert_close(layer(x), layer.base(x) + CFG.scale * shared_only, rtol=0, atol=1e-5)
    assert (layer(x) - layer.base(x)).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_merge_reproduces_unmerged_and_unmerge_restores(kind: str) -> None:
    layer, x = make_layer(kind)
    original = layer.base.weight.detach().clone()
    s = torch.rand(1, K)
    w = rank_weights(route_layer(layer, s), CFG.shared)  # (1, R): one fixed mask
    layer.set_rank_weights(w.expand(x.shape[0], -1))
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge(w[0])
        assert layer.merged
        merged = layer(x)
        layer.unmerge()
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    assert torch.equal(layer.base.weight, original)
    with pytest.raises(RuntimeError):
        layer.unmerge()


def test_no_rank_weights_means_base_only() -> None:
    layer, x = make_layer("conv")
    layer.set_rank_weights(None)
    torch.testing.assert_close(layer(x), layer.base(x))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_gather_form_equals_dense_form(kind: str) -> None:
    """Dynamic export computes only S + k gathered ranks; it must equal the dense form."""
    layer, x = make_layer(kind)
    routing = route_layer(layer, torch.rand(x.shape[0], K))
    layer.set_rank_weights(rank_weights(routing, CFG.shared))
    dense = layer(x)
    layer.set_selection(routing.indices, routing.weights)
    gathered = layer(x)
    torch.testing.assert_close(gathered, dense, rtol=0, atol=1e-5)
    a, b = layer.gathered_factors(routing.indices, routing.weights)
    assert a.shape[:2] == (x.shape[0], CFG.shared + CFG.top_k)
    assert b.shape[2] == CFG.shared + CFG.top_k


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fold_form_equals_dense_form(kind: str) -> None:
    """The in-graph weight-folding form of dynamic routing (`fold_layers`) gives the same output."""
    layer, x = make_layer(kind)
    s = torch.rand(x.shape[0], K)
    layer.set_rank_weights(rank_weights(route_layer(layer, s), CFG.shared))
    dense = layer(x)
    apply_routing({"layer": layer}, s, form="fold")
    assert layer.mode == "fold"
    torch.testing.assert_close(layer(x), dense, rtol=0, atol=1e-5)


@pytest.mark.parametrize("stacked_base_bytes", [routing_module.STACKED_BASE_BYTES, 0])
def test_layers_are_folded_together_by_weight_shape(
    stacked_base_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fold_layers` stacks the layers of one weight shape, a conv and a linear layer among
    them (8 x 6*3*3 = 8 x 54): each layer gets its own routing and weight, with the base
    weights added as one stack or (over the size limit) one by one."""
    monkeypatch.setattr(routing_module, "STACKED_BASE_BYTES", stacked_base_bytes)
    torch.manual_seed(1)
    layers: dict[str, MoRLayer] = {
        "conv": MoRConv2d(nn.Conv2d(6, 8, 3, padding=1), CFG, K),
        "linear54": MoRLinear(nn.Linear(54, 8), CFG, K),
        "linear12a": MoRLinear(nn.Linear(12, 9), CFG, K),
        "linear12b": MoRLinear(nn.Linear(12, 9), CFG, K),
    }
    inputs = {
        "conv": torch.randn(2, 6, 7, 7),
        "linear54": torch.randn(2, 5, 54),
        "linear12a": torch.randn(2, 5, 12),
        "linear12b": torch.randn(2, 5, 12),
    }
    for layer in layers.values():
        nn.init.normal_(layer.lora_B, std=0.5)
    s = torch.rand(2, K)
    with torch.no_grad():
        routings = apply_routing(layers, s)  # dense
        dense = {n: layers[n](x) for n, x in inputs.items()}
        assert apply_routing(layers, s, form="fold").keys() == routings.keys()
        for name, x in inputs.items():
            assert layers[name].mode == "fold"
            torch.testing.assert_close(layers[name](x), dense[name], rtol=0, atol=1e-5, msg=name)
    # the two same-shaped linear layers route differently, so a mix-up would show
    assert not torch.equal(routings["linear12a"].indices, routings["linear12b"].indices)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_every_form_on_shared_merged_weights_equals_dense(kind: str) -> None:
    """The state is one routing form plus a merge: with the shared ranks in the base weight
    (static Core ML slices), dense, gather and fold each add only the routed ranks."""
    layer, x = make_layer(kind)
    s = torch.rand(x.shape[0], K)
    routing = route_layer(layer, s)
    layer.set_rank_weights(rank_weights(routing, CFG.shared))
    assert layer.mode == "dense"
    with torch.no_grad():
        want = layer(x)
        layer.merge_shared()
        outputs = {"dense": layer(x)}
        layer.set_selection(routing.indices, routing.weights)
        outputs[layer.mode] = layer(x)
        apply_routing({"layer": layer}, s, form="fold")
        outputs[layer.mode] = layer(x)
        layer.unmerge()
    assert set(outputs) == {"dense", "gather", "fold"}
    for form, got in outputs.items():
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=form)
    layer.merge(torch.ones(CFG.rank))
    assert layer.mode == "merged"
    layer.unmerge()
    layer.set_rank_weights(None)
    assert layer.mode == "off" and layer.rank_weights is None
