"""GroupNorm written as per-channel reductions, for targets whose kernels keep channels blocked.

Exported as it is, a GroupNorm becomes reshape (N, G, C/G * H * W) + normalisation + reshape:
the reshape needs the feature map in plain NCHW order, so OpenVINO's CPU plugin, which runs
convolutions in a blocked or channels-last layout, reorders the whole map before every
GroupNorm and back after it (its per-node profile: 24 ms of a 65 ms f32 decoder tile of the
built-in model in `Reorder`). Here each channel's mean over the spatial axes is taken first
(a reduction in any layout), the group's mean is the mean of its channels' means (every
channel has the same number of pixels), and only those (N, C) statistics are reshaped. The
same function as `F.group_norm`, to float rounding; the variance is taken about the mean
(two passes), not as E[x^2] - E[x]^2, so bfloat16 inference keeps its precision.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn


def _group_mean(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Each channel's group mean over (C/G, spatial), shaped (N, C, 1, ...) to broadcast on x."""
    per_channel = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    # Plain ints: traced shapes would be recorded as Shape/Gather/Concat ops around every
    # reshape (exported shapes are fixed), which doubled a UNet's export time.
    n, c = (int(v) for v in per_channel.shape[:2])
    grouped = per_channel.reshape(n, groups, c // groups).mean(dim=-1, keepdim=True)
    return grouped.repeat(1, 1, c // groups).reshape(per_channel.shape)  # Tile: expand exports 4 ops


def group_norm_by_reductions(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` for (N, C, ...) inputs, without reshaping `x` itself."""
    centred = x - _group_mean(x, norm.num_groups)
    scale = torch.rsqrt(_group_mean(centred * centred, norm.num_groups) + norm.eps)
    if not norm.affine:
        return centred * scale
    shape = (1, norm.num_channels) + (1,) * (x.dim() - 2)
    return centred * (scale * norm.weight.reshape(shape)) + norm.bias.reshape(shape)


@contextlib.contextmanager
def group_norm_as_reductions(model: nn.Module) -> Iterator[None]:
    """Inside, every GroupNorm of `model` computes `group_norm_by_reductions`; plain after."""
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    originals = [norm.forward for norm in norms]
    try:
        for norm in norms:
            norm.forward = functools.partial(group_norm_by_reductions, norm)  # type: ignore[method-assign]
        yield
    finally:
        for norm, forward in zip(norms, originals, strict=True):
            norm.forward = forward  # type: ignore[method-assign]
