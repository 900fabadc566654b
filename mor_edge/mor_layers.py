"""Mixture-of-Ranks adapter layers.

A LoRA of rank R is treated as R rank-1 experts ``b_i a_i^T``. The first S are shared and
always on; the other E are routed by a per-layer gate over E + Z slots (Z zero slots that
add nothing). A layer does not route by itself: the model computes per-image routing with
`mor_edge.routing` and hands it to each layer, so training, evaluation and export share one
routing path. A layer applies it in one of two equivalent forms:

- dense (`set_rank_weights`): all R ranks are computed and scaled by per-image weights
  (0 for unselected experts). Simple, and what training uses.
- gather (`set_selection`): only the S shared and the k selected ranks are computed, their
  rows of A and columns of B gathered by index, zero slots as zero rows. This is the
  in-graph dynamic routing of exported models (TopK + Gather), at S + k ranks of cost.
- fold (`set_selection(..., fold=True)`): the gathered ranks folded into a per-image weight
  before one base op.

The form a layer is in is one object, `layer.routing` (`Off`, `Dense`, `Gather`, `Fold`), and
each form's forward is that object's; a merged weight (`merge`: a fixed mask, static
export; `merge_shared`: the S shared ranks only) is the other half of the state. `mode`
names the whole: off, dense, gather, fold or merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import MoRConfig


@dataclass(frozen=True)
class Off:
    """Adapter off: the base layer alone."""

    name = "off"

    def forward(self, layer: MoRLayer, x: torch.Tensor) -> torch.Tensor:
        return layer.base(x)


@dataclass(frozen=True)
class Dense:
    """Every rank, scaled by per-image rank weights (N, R): what training runs."""

    rank_weights: torch.Tensor
    name = "dense"

    def forward(self, layer: MoRLayer, x: torch.Tensor) -> torch.Tensor:
        w = self.rank_weights
        if layer.merged:  # the shared ranks are in the base weight already
            w = torch.cat([torch.zeros_like(w[:, : layer.shared]), w[:, layer.shared :]], dim=1)
        return layer.base(x) + layer.adapter_output(x, w)


@dataclass(frozen=True)
class Gather:
    """Only the shared and the selected ranks (indices and gate weights, (N, k) each), on the
    activations."""

    indices: torch.Tensor
    weights: torch.Tensor
    name = "gather"

    def forward(self, layer: MoRLayer, x: torch.Tensor) -> torch.Tensor:
        a, b = layer.gathered_factors(self.indices, self.weights)
        return layer.base(x) + layer.scaling * layer._gathered_output(x, a, b)


@dataclass(frozen=True)
class Fold(Gather):
    """The gathered ranks folded into one per-image weight, then one base op (on a layer
    whose shared ranks are merged, the gather form: the fold would count them twice)."""

    name = "fold"

    def forward(self, layer: MoRLayer, x: torch.Tensor) -> torch.Tensor:
        if layer.merged:
            return super().forward(layer, x)
        a, b = layer.gathered_factors(self.indices, self.weights)
        delta = torch.bmm(b, a.reshape(*a.shape[:2], -1)).reshape(a.shape[0], *layer.base.weight.shape)
        return layer._folded_output(x, layer.base.weight + layer.scaling * delta)


RoutingForm = Off | Dense | Gather | Fold


class MoRLayer(nn.Module):
    """Base class: owns A, B, the gate, the current rank weights and the merge state."""

    base: nn.Linear | nn.Conv2d
    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def __init__(self, base: nn.Linear | nn.Conv2d, config: MoRConfig, gate_dim: int) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank = config.rank
        self.shared = config.shared
        self.routed = config.routed
        self.zero_slots = config.zero_slots
        self.top_k = config.top_k
        self.scaling = config.scale
        self.gate = nn.Linear(gate_dim, config.slots)
        self.routing: RoutingForm = Off()
        self._original: torch.Tensor | None = None  # the base weight before `merge`
        self._merged_ranks: Literal["all", "shared"] | None = None

    def reset_adapter(self) -> None:
        """LoRA init (A random, B zero: the adapter starts as a no-op) and a spread-out gate
        so that different degradations pick different experts from the start."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        nn.init.normal_(self.gate.weight, std=1.0)
        nn.init.normal_(self.gate.bias, std=0.1)

    # -- subclasses -------------------------------------------------------------------
    def _down(self, x: torch.Tensor) -> torch.Tensor:
        """A x: the R rank activations."""
        raise NotImplementedError

    def _up(self, h: torch.Tensor) -> torch.Tensor:
        """B h: back to the base layer's output space."""
        raise NotImplementedError

    def _weight_delta(self, rank_weights: torch.Tensor) -> torch.Tensor:
        """sum_i w_i b_i a_i^T in the base weight's shape, before scaling."""
        raise NotImplementedError

    def _scale_ranks(self, h: torch.Tensor, rank_weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _gathered_output(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """B_n (A_n x_n) per image with per-image factors a (N, r, ...) and b (N, out, r)."""
        raise NotImplementedError

    def _folded_output(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The base op with a per-image weight (N, *base.weight.shape) and the base bias."""
        raise NotImplementedError

    # -- state -------------------------------------------------------------------------
    def set_rank_weights(self, rank_weights: torch.Tensor | None) -> None:
        """Per-image weight of every rank, shape (N, R); None switches the adapter off."""
        self.routing = Off() if rank_weights is None else Dense(rank_weights)

    def set_selection(self, indices: torch.Tensor, weights: torch.Tensor, fold: bool = False) -> None:
        """Selected slots (N, k) and their gate weights (N, k), applied in gather form: on the
        activations, or (``fold=True``) folded into a per-image weight before one base op."""
        self.routing = Fold(indices, weights) if fold else Gather(indices, weights)

    @property
    def rank_weights(self) -> torch.Tensor | None:
        return self.routing.rank_weights if isinstance(self.routing, Dense) else None

    @property
    def mode(self) -> str:
        """off, dense, gather, fold, or merged (a fixed mask in the weight: routing unused)."""
        return "merged" if self._merged_ranks == "all" else self.routing.name

    # -- merge ------------------------------------------------------------------------
    @property
    def merged(self) -> bool:
        return self._merged_ranks is not None

    def delta_weight(self, rank_weights: torch.Tensor) -> torch.Tensor:
        """The scaled weight change for one fixed rank-weight vector of shape (R,)."""
        if rank_weights.shape != (self.rank,):
            raise ValueError(
                f"expected rank weights of shape ({self.rank},), got {tuple(rank_weights.shape)}"
            )
        return self.scaling * self._weight_delta(rank_weights.to(self.base.weight.dtype))

    @torch.no_grad()
    def merge(self, rank_weights: torch.Tensor) -> None:
        """Fold a fixed expert mask into the base weight (static routing)."""
        if self.merged:
            raise RuntimeError("layer is already merged; unmerge first")
        original = self.base.weight.detach().clone()
        self.base.weight.add_(self.delta_weight(rank_weights))
        self._original, self._merged_ranks = original, "all"

    def merge_shared(self) -> None:
        """Fold only the S shared ranks into the base weight: the same for every routing, so
        per-bucket graphs that add their selected ranks on top share identical base weights."""
        shared = torch.zeros(self.rank)
        shared[: self.shared] = 1
        self.merge(shared)
        self._merged_ranks = "shared"

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact base weight (kept aside, not recomputed, so nothing drifts)."""
        if self._original is None:
            raise RuntimeError("layer is not merged")
        self.base.weight.copy_(self._original)
        self._original, self._merged_ranks = None, None

    # -- forward ----------------------------------------------------------------------
    def adapter_output(self, x: torch.Tensor, rank_weights: torch.Tensor) -> torch.Tensor:
        """scaling * B(w * A x) with per-image rank weights w of shape (N, R)."""
        h = self._down(x)
        h = self._scale_ranks(h, rank_weights.to(h.dtype))
        return self.scaling * self._up(h)

    def gathered_factors(
        self, indices: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image A (N, S+k, ...) and weighted B (N, out, S+k) of the shared and selected
        ranks (without the shared ones when `merge_shared` folded them into the base weight).
        Zero slots index zero rows/columns appended after the E routed ones."""
        n, s = indices.shape[0], self.shared
        a, b = self.lora_A, self.lora_B.reshape(self.lora_B.shape[0], self.rank)
        # torch.zeros/ones rather than Tensor.new_*: every converter (coremltools) knows them
        a_slots = torch.cat(
            [a[s:], torch.zeros((self.zero_slots, *a.shape[1:]), dtype=a.dtype, device=a.device)]
        )
        b_slots = torch.cat(
            [b[:, s:], torch.zeros((b.shape[0], self.zero_slots), dtype=b.dtype, device=b.device)], dim=1
        )
        a_sel = torch.cat([a[:s].expand(n, *a[:s].shape), a_slots[indices]], dim=1)
        b_sel = torch.cat([b[:, :s].expand(n, *b[:, :s].shape), b_slots[:, indices].transpose(0, 1)], dim=2)
        w = torch.cat([torch.ones((n, s), dtype=weights.dtype, device=weights.device), weights], dim=1)
        w = w.to(b_sel.dtype)
        if self._merged_ranks == "shared":
            return a_sel[:, s:], b_sel[:, :, s:] * w[:, None, s:]
        return a_sel, b_sel * w[:, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._merged_ranks == "all":  # a fixed expert mask is in the weight
            return self.base(x)
        return self.routing.forward(self, x)


class MoRLinear(MoRLayer):
    """MoR around an `nn.Linear`: A is (R, in), B is (out, R)."""

    base: nn.Linear

    def __init__(self, base: nn.Linear, config: MoRConfig, gate_dim: int) -> None:
        super().__init__(base, config, gate_dim)
        self.lora_A = nn.Parameter(torch.empty(config.rank, base.in_features))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, config.rank))
        self.reset_adapter()

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.lora_A)

    def _up(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.lora_B)

    def _scale_ranks(self, h: torch.Tensor, rank_weights: torch.Tensor) -> torch.Tensor:
        # h is (N, ..., R): broadcast the per-image weights over the middle dimensions.
        shape = (rank_weights.shape[0],) + (1,) * (h.dim() - 2) + (self.rank,)
        return h * rank_weights.reshape(shape)

    def _weight_delta(self, rank_weights: torch.Tensor) -> torch.Tensor:
        return (self.lora_B * rank_weights) @ self.lora_A

    def _gathered_output(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        h = torch.bmm(x3, a.transpose(1, 2))
        y = torch.bmm(h, b.transpose(1, 2))
        return y.reshape(*x.shape[:-1], b.shape[1])

    def _folded_output(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        y = torch.bmm(x3, weight.transpose(1, 2))
        if self.base.bias is not None:
            y = y + self.base.bias
        return y.reshape(*x.shape[:-1], weight.shape[1])


class MoRConv2d(MoRLayer):
    """MoR around an `nn.Conv2d`: A is the k x k conv (in -> R), B a 1 x 1 conv (R -> out)."""

    base: nn.Conv2d

    def __init__(self, base: nn.Conv2d, config: MoRConfig, gate_dim: int) -> None:
        if base.groups != 1:
            raise ValueError("MoRConv2d supports only groups=1 convolutions")
        super().__init__(base, config, gate_dim)
        kh, kw = base.kernel_size  # type: ignore[misc]
        self.lora_A = nn.Parameter(torch.empty(config.rank, base.in_channels, kh, kw))
        self.lora_B = nn.Parameter(torch.empty(base.out_channels, config.rank, 1, 1))
        self.reset_adapter()

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        if b.padding_mode != "zeros":
            x = F.pad(x, b._reversed_padding_repeated_twice, mode=b.padding_mode)
            return F.conv2d(x, self.lora_A, None, b.stride, 0, b.dilation)
        return F.conv2d(x, self.lora_A, None, b.stride, b.padding, b.dilation)

    def _up(self, h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, self.lora_B)

    def _scale_ranks(self, h: torch.Tensor, rank_weights: torch.Tensor) -> torch.Tensor:
        return h * rank_weights[:, :, None, None]

    def _weight_delta(self, rank_weights: torch.Tensor) -> torch.Tensor:
        b = self.lora_B[:, :, 0, 0] * rank_weights
        return torch.einsum("or,rikl->oikl", b, self.lora_A)

    def _grouped_conv(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, n: int
    ) -> torch.Tensor:
        """Per-image kernels in one conv: the N images become N channel groups."""
        b = self.base
        padding: str | tuple[int, ...] = b.padding  # type: ignore[assignment]
        if b.padding_mode != "zeros":
            x = F.pad(x, b._reversed_padding_repeated_twice, mode=b.padding_mode)
            padding = (0, 0)
        y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), weight, bias, b.stride, padding, b.dilation, groups=n)
        return y.reshape(n, -1, *y.shape[2:])

    def _gathered_output(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = self._grouped_conv(x, a.reshape(-1, *a.shape[2:]), None, n)
        y = torch.bmm(b, h.reshape(n, a.shape[1], -1))
        return y.reshape(n, b.shape[1], *h.shape[2:])

    def _folded_output(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        bias = self.base.bias.repeat(n) if self.base.bias is not None else None
        return self._grouped_conv(x, weight.reshape(-1, *weight.shape[2:]), bias, n)


def wrap_layer(module: nn.Module, config: MoRConfig, gate_dim: int) -> MoRLayer | None:
    """The MoR wrapper for a supported layer, or None when the layer cannot be adapted."""
    if isinstance(module, nn.Linear):
        return MoRLinear(module, config, gate_dim)
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return MoRConv2d(module, config, gate_dim)
    return None
