"""A static export's buckets from one trace: the same files as tracing every bucket."""

from __future__ import annotations

import filecmp
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from mor_edge.export import weight_templates
from mor_edge.export.exporter import export
from mor_edge.export.onnx_export import OPSET
from mor_edge.export.routing_plan import default_buckets
from mor_edge.model import MoRSR


def test_templated_buckets_are_the_files_tracing_gives(
    tiny_model: MoRSR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learned: list[int | None] = []
    learn = weight_templates.learn

    def recording(
        *args: object, **kwargs: object
    ) -> tuple[onnx.ModelProto, weight_templates.Template | None]:
        graph, template = learn(*args, **kwargs)  # type: ignore[arg-type]
        learned.append(None if template is None else len(template.slots))
        return graph, template

    monkeypatch.setattr(weight_templates, "learn", recording)
    buckets = default_buckets(tiny_model, 2)  # 16 buckets, several variants per routed stage
    templated = export(tiny_model, tmp_path / "templated", buckets=buckets, progress=False)
    # one template per routed stage, every routed weight a slot (encoder 16, UNet 73)
    assert sorted(n for n in learned if n) == [16, 73]
    monkeypatch.setattr(weight_templates.WeightTemplates, "graph", lambda self, key, varying, trace: trace())
    traced = export(tiny_model, tmp_path / "traced", buckets=buckets, progress=False)
    files = sorted(p.name for p in templated.iterdir())
    assert sum(name.startswith("unet.v") for name in files) > 2
    assert files == sorted(p.name for p in traced.iterdir())
    for name in files:  # the manifest too: same hashes, sizes and checks
        assert filecmp.cmp(templated / name, traced / name, shallow=False), name


class Folded(nn.Module):
    """A Linear on 3-D input (a MatMul on a transposed copy of the weight), or the weight
    scaled, which the exporter folds into a new constant: that graph cannot be templated."""

    def __init__(self, fold: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.other, self.fold = nn.Linear(4, 3), nn.Parameter(torch.randn(3, 3)), fold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        return x @ (2 * w).t() if self.fold else self.linear(x) @ self.other


def tracer(module: nn.Module, path: Path) -> Callable[[], onnx.ModelProto]:
    def trace() -> onnx.ModelProto:
        torch.onnx.export(module, (torch.ones(1, 2, 4),), str(path), opset_version=OPSET, dynamo=False)
        return onnx.load(str(path))

    return trace


def test_a_template_writes_new_weights_or_is_refused(tmp_path: Path) -> None:
    module = Folded(fold=False)
    varying = [module.linear.weight]
    trace = tracer(module, tmp_path / "m.onnx")
    before = module.linear.weight.detach().clone()
    first, template = weight_templates.learn(trace, varying)
    assert template is not None and [s.transposed for s in template.slots] == [True]
    assert torch.equal(module.linear.weight, before)  # the perturbation is undone
    assert first.SerializeToString() == trace().SerializeToString()
    with torch.no_grad():
        module.linear.weight.mul_(-2)
    assert template.fill().SerializeToString() == trace().SerializeToString()
    assert template.fill().SerializeToString() != first.SerializeToString()

    folded = Folded(fold=True)
    _, refused = weight_templates.learn(tracer(folded, tmp_path / "f.onnx"), [folded.linear.weight])
    assert refused is None
