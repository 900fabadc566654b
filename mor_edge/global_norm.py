"""Whole-image GroupNorm statistics for tiled inference on the reference model.

A GroupNorm normalises over the whole feature map it sees, so a tile normalised on its own
statistics differs from the same region of the whole image: that is where seams come from.
`WholeImageNorm` gathers each GroupNorm's per-group mean and variance tile by tile, every
image pixel counted once (each tile owns the part of its overlaps nearest to it), and then
lets the tiles run normalised with those whole-image statistics.

A layer's statistics depend on every GroupNorm before it, so they are gathered in execution
order: each pass over the tiles gathers the next GroupNorm, with the earlier ones already
fixed to their whole-image statistics, and stops each tile's forward there. The statistics
are then exactly those of the untiled image, for about L/2 forwards per tile (L GroupNorms).
Memory stays bounded by the tile: the statistics are a few numbers per group. (Cheaper
schemes lost quality: iterating whole passes to a fixed point diverged, and gathering several
GroupNorms per pass mixed whole-image and per-tile statistics; see the README.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _Accumulator:
    """Per-group sums over the owned pixels of every tile, in float64."""

    def __init__(self) -> None:
        self.total = 0.0
        self.sums: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, grouped: torch.Tensor, weight: torch.Tensor) -> None:
        # grouped (N, G, C/G, L), weight (L,): pixel weights (the owned share of each pixel).
        x = grouped.double()
        w = weight.double()
        sums = (x * w).sum(dim=(2, 3))
        squares = (x * x * w).sum(dim=(2, 3))
        self.sums = sums if self.sums is None else self.sums + sums
        self.squares = squares if self.squares is None else self.squares + squares
        self.total += float(w.sum()) * grouped.shape[2]

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sums is None or self.squares is None or self.total == 0:
            raise RuntimeError("no statistics gathered")
        mean = self.sums / self.total
        var = (self.squares / self.total - mean * mean).clamp_min(0)
        return mean.float(), var.float()


class _StopForward(Exception):
    """Raised after the GroupNorm a pass gathers: the rest of the forward is not needed."""


class WholeImageNorm:
    """Swap every GroupNorm of `model` for one that can gather statistics over owned pixels
    and normalise with fixed (whole-image) statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
        self.fixed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._gathering: _Accumulator | None = None
        self._gathering_name: str | None = None
        self._owned: torch.Tensor | None = None  # (h, w) ownership of the tile, LR grid

    def execution_order(self, forward: Callable[[], Any]) -> list[str]:
        """The GroupNorms in the order one forward calls them."""
        order: list[str] = []
        hooks = [
            m.register_forward_pre_hook(lambda _m, _a, n=name: order.append(n))
            for name, m in self.norms.items()
        ]
        try:
            forward()
        finally:
            for h in hooks:
                h.remove()
        return list(dict.fromkeys(order))

    def gather(
        self,
        tiles: Callable[[], Iterable[tuple[torch.Tensor, Callable[[], Any]]]],
        order: list[str],
    ) -> None:
        """Whole-image statistics of every GroupNorm in `order`. `tiles()` yields each tile's
        ownership map and a function running its forward; it is walked once per GroupNorm."""
        self.fixed = {}
        with self.active():
            for name in order:
                self._gathering = _Accumulator()
                self._gathering_name = name
                for owned, forward in tiles():
                    self._owned = owned.float()
                    with contextlib.suppress(_StopForward):
                        forward()
                self.fixed[name] = self._gathering.moments()
            self._gathering = self._gathering_name = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside, the GroupNorms follow this object's mode; outside they are plain again."""
        originals = {name: m.forward for name, m in self.norms.items()}
        try:
            for name, m in self.norms.items():
                m.forward = self._forward_for(name, m)  # type: ignore[method-assign]
            yield
        finally:
            for name, m in self.norms.items():
                m.forward = originals[name]  # type: ignore[method-assign]

    def _weights(self, size: tuple[int, ...]) -> torch.Tensor:
        """The ownership map at a feature map's resolution, flattened (area-resampled)."""
        if self._owned is None:
            raise RuntimeError("statistics are gathered only inside gather()")
        if len(size) == 1:  # attention's GroupNorm sees (N, C, h*w) of a square tile
            side = math.isqrt(size[0])
            size = (side, size[0] // side)
        owned = F.interpolate(self._owned[None, None], size=size, mode="area")
        return owned.reshape(-1)

    def _forward_for(self, name: str, norm: nn.GroupNorm) -> Any:
        groups, eps = norm.num_groups, norm.eps

        def forward(x: torch.Tensor) -> torch.Tensor:
            n, c = x.shape[:2]
            grouped = x.reshape(n, groups, c // groups, -1)
            if self._gathering is not None and name == self._gathering_name:
                self._gathering.add(grouped, self._weights(tuple(x.shape[2:])))
                raise _StopForward
            if name not in self.fixed:
                return F.group_norm(x, groups, norm.weight, norm.bias, eps)
            mean, var = self.fixed[name]
            y = (grouped - mean[..., None, None].to(x.dtype)) * torch.rsqrt(
                var[..., None, None].to(x.dtype) + eps
            )
            y = y.reshape(x.shape)
            if norm.affine:
                shape = (1, c) + (1,) * (x.dim() - 2)
                y = y * norm.weight.reshape(shape) + norm.bias.reshape(shape)
            return y

        return forward
