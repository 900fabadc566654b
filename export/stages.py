"""The modules every target exports: one stage of a model as a plain tensors-in,
tensors-out module. What each stage takes and gives is `mor_edge.stage_contract`'s."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mor_edge.model import MoRSR
from mor_edge.stage_contract import ROUTED_STAGES, STAGES, StageSpec


def example_inputs(spec: StageSpec, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The contract's dummy inputs as tensors, in input order (for tracing and exporting)."""
    return tuple(torch.from_numpy(v) for v in spec.dummy_inputs(seed).values())


class StageModule(nn.Module):
    """One stage of a model as a plain tensors-in, tensors-out module.

    In dynamic mode the routed stages take `s` and route in-graph (TopK + Gather) in the
    given form ("fold": selected ranks folded into the weights in-graph; "gather": applied
    to the activations); one `s` (1, K) routes every tile of a batch. Otherwise they take
    no `s` and run the layers as they are: merged with a bucket's experts by the caller
    (static), or with adapters off (base)."""

    def __init__(
        self, model: MoRSR, stage: str, routing: str, form: str = "fold", varying: Sequence[torch.Tensor] = ()
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        self.model, self.stage, self.routing, self.form = model, stage, routing, form
        # The weights this stage's graphs differ in within one export (a static bucket's folded
        # routed weights): targets that trace may trace once and write them in
        # (`weight_templates`).
        self.varying = tuple(varying)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        m = self.model
        s = None
        if self.routing == "dynamic" and self.stage in ROUTED_STAGES:
            s, tiles = inputs[1], inputs[0].shape[0]
            if tiles != 1:  # the layers route image by image (no op at all for one tile)
                s = s.expand(tiles, -1)
        if self.stage == "router":
            return m.route(inputs[0])
        if self.stage == "encoder":
            return m.encode(m.upsample(inputs[0]), s, form=self.form)
        if self.stage == "unet":
            return m.denoise(inputs[0], s, form=self.form)
        return m.decode(inputs[0], inputs[1] if len(inputs) > 1 else None)
