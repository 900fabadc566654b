"""Mixture-of-Ranks adapter layers.

A LoRA of rank R is treated as R rank-1 experts ``b_i a_i^T``. The first S are shared and
always on; the other E are routed by a per-layer gate over E + Z slots (Z zero slots that
add nothing). A layer does not route by itself: the model computes per-image routing with
`mor_edge.routing` and hands it to each layer, so training, evaluation and export share one
routing path. A layer applies it in one of three equivalent forms:

- dense (`set_rank_weights`): all R ranks are computed and scaled by per-image weights
  (0 for unselected experts). Simple, and what training uses.
- gather (`set_selection`): only the S shared and the k selected ranks are computed, their
  rows of A and columns of B gathered by index, zero slots as zero rows. This is the
  in-graph dynamic routing of exported models (TopK + Gather), at S + k ranks of cost.
- fold (`set_folded`): a per-image weight with the shared and selected ranks folded in,
  before one base op; `routing.fold_layers` makes it for all the layers of a stage together.

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
        return layer.base(x) + layer._gathered_output(x, a, b)


@dataclass(frozen=True)
class Fold:
    """A per-image weight (N, out, in * kh * kw) with the shared and selected ranks in it, then
    one base op. Made by `routing.fold_layers` for a whole stage at once: in-graph dynamic
    routing on a small model is bound by the number of small ops, not their work."""

    weight: torch.Tensor
    name = "fold"

    def forward(self, layer: MoRLayer, x: torch.Tensor) -> torch.Tensor:
        return layer._folded_output(x, self.weight)


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
        """The base op with a per-image weight (N, out, in * kh * kw) and the base bias."""
        raise NotImplementedError

    # -- state -------------------------------------------------------------------------
    def set_rank_weights(self, rank_weights: torch.Tensor | None) -> None:
        """Per-image weight of every rank, shape (N, R); None switches the adapter off."""
        self.routing = Off() if rank_weights is None else Dense(rank_weights)

    def set_selection(self, indices: torch.Tensor, weights: torch.Tensor) -> None:
        """Selected slots (N, k) and their gate weights (N, k), applied on the activations."""
        self.routing = Gather(indices, weights)

    def set_folded(self, weight: torch.Tensor) -> None:
        """A per-image weight (N, out, in * kh * kw) with the ranks in use folded in."""
        self.routing = Fold(weight)

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

    def slot_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A's rows (E + Z, in * kh * kw) and B's columns as rows (E + Z, out), scaled by the
        LoRA scaling, of the routed slots; zero slots are zero rows."""
        s, z = self.shared, self.zero_slots
        a = self.lora_A.reshape(self.rank, -1)
        b = self.lora_B.reshape(self.lora_B.shape[0], self.rank).t() * self.scaling
        # torch.zeros rather than Tensor.new_zeros: every converter (coremltools) knows it
        a_zero = torch.zeros((z, a.shape[1]), dtype=a.dtype, device=a.device)
        b_zero = torch.zeros((z, b.shape[1]), dtype=b.dtype, device=b.device)
        return torch.cat([a[s:], a_zero]), torch.cat([b[s:], b_zero])

    def routed_factors(
        self, indices: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image A (N, k, ...) and B (N, out, k) of the selected slots, B scaled by the
        gate weights and the LoRA scaling."""
        a_slots, b_slots = self.slot_factors()
        a = a_slots[indices].reshape(*indices.shape, *self.lora_A.shape[1:])
        b = b_slots[indices] * weights.to(b_slots.dtype)[..., None]
        return a, b.transpose(1, 2)

    def gathered_factors(
        self, indices: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`routed_factors` with the S shared ranks in front (weight 1), unless `merge_shared`
        folded them into the base weight."""
        a_sel, b_sel = self.routed_factors(indices, weights)
        if self._merged_ranks == "shared":
            return a_sel, b_sel
        n, s = indices.shape[0], self.shared
        a_shared = self.lora_A[:s]
        b_shared = self.lora_B.reshape(self.lora_B.shape[0], self.rank)[:, :s] * self.scaling
        return (
            torch.cat([a_shared.expand(n, *a_shared.shape), a_sel], dim=1),
            torch.cat([b_shared.expand(n, *b_shared.shape), b_sel], dim=2),
        )

    def shared_weight(self) -> torch.Tensor:
        """The base weight with the S shared ranks added (as it is after `merge_shared`)."""
        if self._merged_ranks == "shared":
            return self.base.weight
        mask = torch.zeros(self.rank, dtype=self.base.weight.dtype, device=self.base.weight.device)
        mask[: self.shared] = 1
        return self.base.weight + self.delta_weight(mask)

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
        flat = x.dim() == 3  # (N, tokens, in), as in attention: no reshapes in the graph
        x3 = x if flat else x.reshape(x.shape[0], -1, x.shape[-1])
        y = torch.bmm(x3, weight.transpose(1, 2))
        if self.base.bias is not None:
            y = y + self.base.bias
        return y if flat else y.reshape(*x.shape[:-1], weight.shape[1])


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
        if n == 1:  # one image (a fixed size when traced for export): no reshapes in the graph
            return F.conv2d(x, weight, bias, b.stride, padding, b.dilation)
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
        return self._grouped_conv(x, weight.reshape(-1, *self.base.weight.shape[1:]), bias, n)


def wrap_layer(module: nn.Module, config: MoRConfig, gate_dim: int) -> MoRLayer | None:
    """The MoR wrapper for a supported layer, or None when the layer cannot be adapted."""
    if isinstance(module, nn.Linear):
        return MoRLinear(module, config, gate_dim)
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return MoRConv2d(module, config, gate_dim)
    return None
