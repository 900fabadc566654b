"""The PyTorch reference behind the tiler's `TileEngine` interface (`mor_edge.tiling`)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .global_norm import WholeImageNorm
from .model import MoRSR
from .tiling import TileInputs


@dataclass
class ReferenceEngine:
    """The PyTorch reference behind the `TileEngine` interface. With `whole_image_norm` its
    GroupNorms run on whole-image statistics gathered over the tiles first
    (`mor_edge.global_norm`); without, each tile is normalised alone. `batch` tiles go
    through the model per call."""

    model: MoRSR
    whole_image_norm: bool = False
    batch: int = 1
    _norm: WholeImageNorm | None = field(default=None, init=False, repr=False)
    _order: list[str] = field(default_factory=list, init=False, repr=False)

    @property
    def scale(self) -> int:
        return int(self.model.config.scale)

    @property
    def router_size(self) -> int:
        return int(self.model.estimator.image_size)

    @property
    def margin(self) -> int:
        return self.model.config.colour_margin

    @torch.no_grad()
    def route(self, lr: np.ndarray) -> np.ndarray:
        return self.model.route(torch.from_numpy(lr)).numpy()

    @torch.no_grad()
    def run(self, lr: np.ndarray, s: np.ndarray) -> np.ndarray:
        with self._norm.active() if self._norm else contextlib.nullcontext():
            return self.model(torch.from_numpy(lr), s=torch.from_numpy(s)).numpy()

    def _whole_norm(self) -> WholeImageNorm:
        """One GroupNorm swapper for the engine's life, with the order the forward calls them."""
        if self._norm is None:
            self._norm = WholeImageNorm(self.model)
            size = self.router_size
            probe = torch.zeros(1, 3, size, size)
            with torch.no_grad():
                self._order = self._norm.execution_order(lambda: self.model(probe, s=self.model.route(probe)))
        return self._norm

    def passes(self) -> int:
        if not self.whole_image_norm:
            return 0
        self._whole_norm()
        return len(self._order)

    @torch.no_grad()
    def prepare(self, tiles: TileInputs) -> None:
        if not self.whole_image_norm:
            return
        norm = self._whole_norm()

        def forwards() -> Iterator[tuple[torch.Tensor, Callable[[], Any]]]:
            for lr, s, owned in tiles():
                run = functools.partial(self.model, torch.from_numpy(lr), s=torch.from_numpy(s))
                yield torch.from_numpy(owned), run

        norm.gather(forwards, self._order)
