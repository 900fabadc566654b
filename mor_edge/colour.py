"""Colour alignment: the SR image keeps its detail but takes its low frequencies (its colours
and shading) from the bicubic-upsampled input, as OSEDiff and StableSR do at inference.

- ``wavelet`` (default): `levels` levels of an a-trous 3x3 binomial blur (dilation 1, 2, 4,
  ...; replicated borders) split an image into a low-pass part and the rest. The result is
  ``high(sr) + low(up) = sr + low(up - sr)``, since the blur is linear: one low-pass of the
  difference. Its support is finite (`support` pixels each side), so tiling can keep it
  exact (`mor_edge.config.support`; `mor_edge.tiling` drops that margin from every tile's blend weights).
  With ``denoise`` d in (0, 1], one more level's band is taken from `sr` in the proportion
  d: the model's cleaner version of the input's fine texture, noise and JPEG blocks
  (README: denoise).
- ``adain``: per-channel mean and standard deviation of `sr` set to those of `up`. Global
  over whatever it sees: under tiling that is each tile.
- ``none``: the SR image as the decoder made it.

Plain convolutions and pads: it exports to every target as part of the decoder stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import COLOUR_FIXES, MoRSRConfig

_BINOMIAL = (0.25, 0.5, 0.25)


def _blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur with holes (a-trous), per channel, replicated borders; separable."""
    c = image.shape[1]
    # Built from Python numbers, so that exporters trace the kernels as constants.
    column = torch.tensor([[[[t] for t in _BINOMIAL]]] * c, dtype=image.dtype, device=image.device)
    row = torch.tensor([[[list(_BINOMIAL)]]] * c, dtype=image.dtype, device=image.device)
    padded = F.pad(image, (dilation, dilation, dilation, dilation), mode="replicate")
    rows = F.conv2d(padded, column, groups=c, dilation=(dilation, 1))
    return F.conv2d(rows, row, groups=c, dilation=(1, dilation))


def low_pass(image: torch.Tensor, levels: int) -> torch.Tensor:
    """The low-frequency part left after `levels` a-trous levels."""
    for i in range(levels):
        image = _blur(image, 2**i)
    return image


def wavelet_fix(sr: torch.Tensor, up: torch.Tensor, levels: int, denoise: float = 0.0) -> torch.Tensor:
    """high(sr) + low(up); with `denoise` d, the band between `levels` and `levels + 1` is
    taken from `sr` in the proportion d (d = 1 is `levels + 1`)."""
    low = low_pass(up - sr, levels)
    if denoise:
        low = low + denoise * (_blur(low, 2**levels) - low)
    return sr + low


def adain_fix(sr: torch.Tensor, up: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-image, per-channel mean and std of `sr` replaced by those of `up`."""
    sr_mean, up_mean = sr.mean(dim=(2, 3), keepdim=True), up.mean(dim=(2, 3), keepdim=True)
    sr_std = sr.std(dim=(2, 3), keepdim=True, unbiased=False)
    up_std = up.std(dim=(2, 3), keepdim=True, unbiased=False)
    return (sr - sr_mean) / (sr_std + eps) * up_std + up_mean


def colour_fix(
    sr: torch.Tensor, up: torch.Tensor, method: str, levels: int, denoise: float = 0.0
) -> torch.Tensor:
    """Align `sr`'s colours to `up` (both (N, 3, H, W), the same range)."""
    if method == "wavelet":
        return wavelet_fix(sr, up, levels, denoise)
    if method == "adain":
        return adain_fix(sr, up)
    if method == "none":
        return sr
    raise ValueError(f"colour fix must be one of {COLOUR_FIXES}, got {method!r}")


class ColourStep(nn.Module):
    """The model's colour step as a module (no weights), so that exported graphs name its nodes
    `.../colour/...` and INT8 keeps them in float. Reads the method and level count from the
    model's config when it runs."""

    def __init__(self, config: MoRSRConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, sr: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        c = self.config
        return colour_fix(sr, up, c.colour_fix, c.colour_levels, c.denoise)
