"""Whole-image inference with the reference model on any size within a limit."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import UserError
from .model import MoRSR

MAX_LR_PIXELS = 512 * 512


def size_multiple(model: MoRSR) -> int:
    """LR sides must be multiples of this so that every down/up-sampling step lines up."""
    vae_factor = 2 ** (len(model.config.vae["block_out_channels"]) - 1)
    unet_factor = 2 ** (len(model.config.unet["block_out_channels"]) - 1)
    total = vae_factor * unet_factor
    return max(1, -(-total // model.config.scale))


@torch.no_grad()
def upscale_image(model: MoRSR, lr: torch.Tensor) -> torch.Tensor:
    """(1, 3, h, w) in [0, 1] -> (1, 3, scale*h, scale*w). The input is padded by edge
    replication to a size the model accepts and the output cropped back."""
    _, _, h, w = lr.shape
    if h * w > MAX_LR_PIXELS:
        raise UserError(
            f"input is {w}x{h}; untiled inference is limited to {MAX_LR_PIXELS:,} pixels "
            f"(e.g. 512x512) to bound memory"
        )
    m = size_multiple(model)
    pad_h, pad_w = -h % m, -w % m
    x = F.pad(lr, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else lr
    sr = model(x)
    return sr[:, :, : h * model.config.scale, : w * model.config.scale]
