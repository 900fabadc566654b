"""One trace for all of a stage's static buckets: their graphs differ only in weights.

A static export folds each bucket's experts into the routed layers' weights and traces the
stage again, so the tiny model's 34 graphs were 34 traces: 22 of the 28 s of its OpenVINO
export (profiled), paid on every first `upscale` of a model. Here a stage is traced twice:
with the first bucket's weights, and with every varying weight perturbed. The initializers
that change between the two must each be a copy of one varying weight (as it is, or
transposed, as a Linear's is for MatMul), and writing the perturbed weights into the first
graph must give the second byte for byte; then every further bucket's graph is the first
with its weights written in. A graph that fails the check (a weight folded into another
constant, a structure that depends on values) is traced for every bucket, as before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

# Templates hold two graphs of a stage in memory: larger graphs (sd21's UNet) are traced per
# bucket instead.
MAX_TEMPLATE_BYTES = 512 << 20


@dataclass(frozen=True)
class Slot:
    """An initializer that is a copy of one varying weight."""

    index: int  # position in graph.initializer
    param: torch.Tensor
    transposed: bool


@dataclass
class Template:
    """A stage's first traced graph and where the varying weights sit in it."""

    graph: onnx.ModelProto
    slots: list[Slot]

    def fill(self) -> onnx.ModelProto:
        """The template with the weights' current values written in."""
        proto = copy.deepcopy(self.graph)
        for slot in self.slots:
            init = proto.graph.initializer[slot.index]
            value = slot.param.detach().cpu().numpy()
            value = value.T if slot.transposed else value
            filled = numpy_helper.from_array(np.ascontiguousarray(value.reshape(tuple(init.dims))), init.name)
            init.CopyFrom(filled)
        return proto


def _slot(index: int, value: np.ndarray, params: Sequence[torch.Tensor]) -> Slot | None:
    """The one varying weight that `value` copies, or None if none or several do."""
    found = []
    for p in params:
        if p.numel() != value.size:
            continue
        w = p.detach().cpu().numpy()
        if np.array_equal(w.reshape(value.shape), value):
            found.append(Slot(index, p, False))
        elif w.ndim == 2 and w.T.shape == value.shape and np.array_equal(w.T, value):
            found.append(Slot(index, p, True))
    return found[0] if len(found) == 1 else None


@torch.no_grad()
def learn(
    trace: Callable[[], onnx.ModelProto], varying: Sequence[torch.Tensor], seed: int = 0
) -> tuple[onnx.ModelProto, Template | None]:
    """Trace with the current weights; return that graph and a checked template (or None)."""
    first = trace()
    if sum(len(t.raw_data) for t in first.graph.initializer) > MAX_TEMPLATE_BYTES or not varying:
        return first, None
    saved = [p.detach().clone() for p in varying]
    generator = torch.Generator().manual_seed(seed)
    try:
        for p in varying:  # a generic change of every varying weight
            p.add_((torch.rand(p.shape, generator=generator) + 0.5) * (p.abs().mean() + 1e-3))
        second = trace()
        slots = []
        for i, (a, b) in enumerate(zip(first.graph.initializer, second.graph.initializer, strict=False)):
            if a.name != b.name:
                return first, None
            if a.SerializeToString() != b.SerializeToString():
                slot = _slot(i, numpy_helper.to_array(b), varying)
                if slot is None:
                    return first, None
                slots.append(slot)
        template = Template(first, slots)
        if template.fill().SerializeToString() != second.SerializeToString():
            return first, None
    finally:
        for p, original in zip(varying, saved, strict=True):
            p.copy_(original)
    return first, template


class WeightTemplates:
    """Templates by stage key, learned on a stage's first graph of an export."""

    def __init__(self) -> None:
        self._templates: dict[Hashable, Template | None] = {}

    def graph(
        self, key: Hashable, varying: Sequence[torch.Tensor], trace: Callable[[], onnx.ModelProto]
    ) -> onnx.ModelProto:
        if key not in self._templates:
            graph, self._templates[key] = learn(trace, varying)
            return graph
        template = self._templates[key]
        return trace() if template is None else template.fill()
