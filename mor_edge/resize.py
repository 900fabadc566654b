"""Bicubic resizing, the one place the model resizes images.

`F.interpolate(..., "bicubic")` normally; inside `bicubic_as_matmul()` the same function as
two matrix products (`M_h @ x @ M_w^T`, the matrices being the resize applied to unit
vectors), for exporters whose target has no bicubic resize op (Core ML).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_AS_MATMUL: contextvars.ContextVar[bool] = contextvars.ContextVar("bicubic_as_matmul", default=False)


CUBIC_A = -0.75  # PyTorch's (and OpenCV's) Keys cubic coefficient


def _keys(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return (CUBIC_A + 2) * x**3 - (CUBIC_A + 3) * x**2 + 1
    return CUBIC_A * (x**3 - 5 * x**2 + 8 * x - 4) if x < 2 else 0.0


@functools.cache
def _resize_rows(size_in: int, size_out: int) -> tuple[tuple[float, ...], ...]:
    """PyTorch's bicubic rule (align_corners=False, taps clamped at the borders, no
    antialiasing) as a (size_out, size_in) matrix, in plain Python so tracing sees a constant."""
    rows = []
    for o in range(size_out):
        src = (o + 0.5) * size_in / size_out - 0.5
        floor = math.floor(src)
        t = src - floor
        row = [0.0] * size_in
        for tap in range(-1, 3):
            row[min(max(floor + tap, 0), size_in - 1)] += _keys(tap - t)
        rows.append(tuple(row))
    return tuple(rows)


def resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in): 1-D bicubic resize, the function `F.interpolate` computes."""
    return torch.tensor(_resize_rows(size_in, size_out), dtype=torch.float64)


def bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, H, W) to `size` bicubically (not clamped)."""
    if not _AS_MATMUL.get():
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    # Plain ints: under tracing a shape is a traced value, and the matrix would be built (and
    # recorded) number by number, 9 s a stage; exported shapes are fixed.
    (h_in, w_in), (h_out, w_out) = (int(v) for v in x.shape[-2:]), (int(v) for v in size)
    rows = resize_matrix(h_in, h_out).to(x.dtype)
    cols = resize_matrix(w_in, w_out).to(x.dtype)
    return rows @ x @ cols.T


@contextlib.contextmanager
def bicubic_as_matmul() -> Iterator[None]:
    token = _AS_MATMUL.set(True)
    try:
        yield
    finally:
        _AS_MATMUL.reset(token)


class BicubicUpsample(nn.Module):
    """Bicubic x`scale` as a module (no weights), so that exported graphs name its nodes
    `.../upsampler/...`: its matmul form's constant matrices are not weights, and INT8 keeps
    them in float."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bicubic(x, (x.shape[-2] * self.scale, x.shape[-1] * self.scale))
