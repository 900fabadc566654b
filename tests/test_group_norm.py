"""GroupNorm as per-channel reductions (what the OpenVINO target exports): the same function
as `F.group_norm`, and only inside its context."""

from __future__ import annotations

import io
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mor_edge.export.group_norm import group_norm_as_reductions, group_norm_by_reductions


@pytest.mark.parametrize(
    ("groups", "channels", "spatial", "affine"),
    [(8, 16, (12, 10), True), (16, 96, (8, 8), True), (32, 64, (37,), True), (4, 8, (5, 7), False)],
)
def test_reductions_compute_group_norm(
    groups: int, channels: int, spatial: tuple[int, ...], affine: bool
) -> None:
    torch.manual_seed(0)
    norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=affine)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    # channels with their own offsets and scales, so that a group's statistics are not its
    # first channel's nor the whole map's
    x = torch.randn(2, channels, *spatial) * torch.rand(channels).view(-1, *[1] * len(spatial)) * 4
    x = x + torch.randn(channels).view(-1, *[1] * len(spatial)) * 3
    expected = F.group_norm(x, groups, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(group_norm_by_reductions(norm, x), expected, rtol=1e-5, atol=1e-5)


def _onnx_ops(module: nn.Module, x: torch.Tensor) -> set[str]:
    buffer = io.BytesIO()
    torch.onnx.export(module, (x,), buffer, opset_version=18, dynamo=False)
    return {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}


def test_the_context_rewrites_the_graph_and_restores_the_module() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU())
    x = torch.randn(1, 3, 16, 16)
    before = model(x)
    assert "InstanceNormalization" in _onnx_ops(model, x)  # how the exporter writes GroupNorm
    with group_norm_as_reductions(model):
        ops = _onnx_ops(model, x)
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert "InstanceNormalization" not in ops and "ReduceMean" in ops
    # nothing is left behind: the next export writes the plain GroupNorm again
    assert "InstanceNormalization" in _onnx_ops(model, x)
    assert torch.equal(model(x), before)


def test_an_untrained_model_in_reductions_form_loads_in_onnx_runtime(tmp_path: Path) -> None:
    """Equal GroupNorm weights (every untrained model) made the exporter share initializers
    through Identity nodes, and ONNX Runtime's optimizer refused the graph: OpenVINO INT8
    exports, whose calibration runs the float graph there, stopped on it."""
    import onnxruntime as ort

    from mor_edge.builtin import random_model
    from mor_edge.export.onnx_export import OnnxTarget
    from mor_edge.export.stages import StageModule, example_inputs
    from mor_edge.stage_contract import stage_specs

    model = random_model(seed=0).eval()
    spec = stage_specs(model.config, "base")["decoder"]
    path = tmp_path / "decoder.onnx"
    with torch.no_grad(), group_norm_as_reductions(model):
        module = StageModule(model, "decoder", "base", "fold")
        OnnxTarget().export_stage(module, spec, path)
        inputs = example_inputs(spec)
        expected = module(*inputs)
    graph = onnx.load(str(path)).graph
    initializers = {t.name for t in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs, strict=True)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
