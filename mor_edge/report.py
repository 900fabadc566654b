"""What a model is made of: parameters per component, MoR layout, MACs per stage."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .model import MoRSR


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: MoRSR) -> dict[str, int]:
    """Parameters per component; adapters (A, B, gates) are counted apart from the base."""
    adapters = {
        "encoder_adapters": sum(_count(m) - _count(m.base) for m in model.encoder_layers().values()),
        "unet_adapters": sum(_count(m) - _count(m.base) for m in model.unet_layers().values()),
    }
    return {
        "router": _count(model.estimator),
        "vae_encoder": _count(model.vae.encoder)
        + _count(model.vae.quant_conv or nn.Identity())
        - adapters["encoder_adapters"],
        "unet": _count(model.unet) - adapters["unet_adapters"],
        "vae_decoder": _count(model.vae.decoder) + _count(model.vae.post_quant_conv or nn.Identity()),
        **adapters,
        "total": _count(model),
    }


def stage_macs(model: MoRSR, batch: int = 1) -> dict[str, int]:
    """Multiply-accumulates per stage for one image at the configured LR size, counted on a
    meta-device copy so that even sd21 is counted in seconds and without memory."""
    config = model.config
    with torch.device("meta"):
        meta = MoRSR(config)
    lr = torch.zeros(batch, 3, config.lr_size, config.lr_size, device="meta")
    macs: dict[str, int] = {}

    def measure(name: str, fn: Any, *args: Any) -> Any:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            out = fn(*args)
        macs[name] = counter.get_total_flops() // 2
        return out

    s = measure("router", meta.route, lr)
    up = meta.upsample(lr)
    z = measure("encoder", meta.encode, up, s)
    x0 = measure("unet", meta.denoise, z, s)
    measure("decoder", meta.decode, x0, lr)
    macs["total"] = sum(macs.values())
    return macs


def mor_layout(model: MoRSR) -> dict[str, Any]:
    mor = model.config.mor
    return {
        "rank": mor.rank,
        "shared": mor.shared,
        "routed": mor.routed,
        "zero_slots": mor.zero_slots,
        "top_k": mor.top_k,
        "alpha": mor.alpha,
        "gate_inputs": model.config.degradation_names,
        "estimator_input": model.config.estimator_input,
        "adapted_layers": {
            stage: {"count": len(s.adapted), "linear": s.linear, "conv": s.conv}
            for stage, s in model.summaries.items()
        },
    }


def model_report(model: MoRSR) -> dict[str, Any]:
    c = model.config
    return {
        "name": c.name,
        "label": c.label,
        "lr_size": [c.lr_size, c.lr_size],
        "sr_size": [c.sr_size, c.sr_size],
        "parameters": parameter_counts(model),
        "mor": mor_layout(model),
        "macs": stage_macs(model),
    }
