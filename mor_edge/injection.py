"""Inject MoR layers into a model by target-module name patterns (PEFT-style suffix match)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from .config import MoRConfig
from .mor_layers import MoRLayer, wrap_layer


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True if the dotted module name ends with one of the patterns at a name boundary."""
    return any(name == p or name.endswith("." + p) for p in patterns)


@dataclass
class InjectionSummary:
    """What `inject_mor` adapted and what it skipped, for `mor-edge info` and logs."""

    adapted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    linear: int = 0
    conv: int = 0
    adapter_params: int = 0

    def __str__(self) -> str:
        return (
            f"{len(self.adapted)} layers adapted ({self.linear} linear, {self.conv} conv), "
            f"{self.adapter_params:,} adapter parameters, {len(self.skipped)} matches skipped"
        )


def inject_mor(
    model: nn.Module, targets: Iterable[str], config: MoRConfig, gate_dim: int
) -> InjectionSummary:
    """Replace every Linear/Conv2d whose name matches `targets` with its MoR wrapper."""
    targets = tuple(targets)
    summary = InjectionSummary()
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if name and matches(name, targets) and not isinstance(module, MoRLayer)
    ]
    for name, module in candidates:
        wrapped = wrap_layer(module, config, gate_dim)
        if wrapped is None:
            summary.skipped.append(name)
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, wrapped)
        summary.adapted.append(name)
        summary.adapter_params += sum(
            p.numel() for n, p in wrapped.named_parameters() if not n.startswith("base.")
        )
        if isinstance(module, nn.Linear):
            summary.linear += 1
        else:
            summary.conv += 1
    return summary
