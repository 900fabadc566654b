"""Per-stage descriptions (inputs, outputs, dummy inputs) and the modules every target exports.

Stages (batch 1, fixed shapes from the model config):
  router   lr (1,3,h,w)                      -> s (1,K)
  encoder  lr (1,3,h,w) [+ s in dynamic mode] -> latent (1,C,H/f,W/f)   (bicubic upsample in-graph)
  unet     latent [+ s in dynamic mode]       -> x0 (1,C,H/f,W/f)
  decoder  x0 [+ lr: colour step, residual]   -> image (1,3,H,W) in [0, 1]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from mor_edge.model import MoRSR

STAGES = ("router", "encoder", "unet", "decoder")
ROUTED_STAGES = ("encoder", "unet")
ROUTING_MODES = ("static", "dynamic", "base")  # base: adapters off, for comparison


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def dummy_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Plausible inputs: images and scores in [0, 1], latents roughly unit scale."""
        g = torch.Generator().manual_seed(seed)
        out = []
        for spec in self.inputs:
            if spec.name in ("lr", "s"):
                out.append(torch.rand(spec.shape, generator=g))
            else:
                out.append(torch.randn(spec.shape, generator=g))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def stage_specs(model: MoRSR, routing: str) -> dict[str, StageSpec]:
    """The four stages' tensors for this model and routing mode."""
    if routing not in ROUTING_MODES:
        raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}")
    c = model.config
    k = len(c.prompt_pairs)
    vae_factor = 2 ** (len(c.vae["block_out_channels"]) - 1)
    latent_side = c.sr_size // vae_factor
    latent = (1, c.vae["latent_channels"], latent_side, latent_side)
    lr = TensorSpec("lr", (1, 3, c.lr_size, c.lr_size))
    s = TensorSpec("s", (1, k))
    extra = (s,) if routing == "dynamic" else ()
    return {
        "router": StageSpec("router", (lr,), (s,)),
        "encoder": StageSpec("encoder", (lr, *extra), (TensorSpec("latent", latent),)),
        "unet": StageSpec("unet", (TensorSpec("latent", latent), *extra), (TensorSpec("x0", latent),)),
        "decoder": StageSpec(
            "decoder",
            (TensorSpec("x0", latent), *((lr,) if c.decoder_takes_lr else ())),
            (TensorSpec("image", (1, 3, c.sr_size, c.sr_size)),),
        ),
    }


class StageModule(nn.Module):
    """One stage of a model as a plain tensors-in, tensors-out module.

    In dynamic mode the routed stages take `s` and route in-graph (TopK + Gather) in the
    given form ("fold": selected ranks folded into the weights in-graph; "gather": applied
    to the activations). Otherwise they take no `s` and run the layers as they are: merged
    with a bucket's experts by the caller (static), or with adapters off (base)."""

    def __init__(self, model: MoRSR, stage: str, routing: str, form: str = "fold") -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        self.model, self.stage, self.routing, self.form = model, stage, routing, form

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        m = self.model
        s = inputs[1] if self.routing == "dynamic" and len(inputs) > 1 else None
        if self.stage == "router":
            return m.route(inputs[0])
        if self.stage == "encoder":
            return m.encode(m.upsample(inputs[0]), s, form=self.form)
        if self.stage == "unet":
            return m.denoise(inputs[0], s, form=self.form)
        return m.decode(inputs[0], inputs[1] if len(inputs) > 1 else None)
