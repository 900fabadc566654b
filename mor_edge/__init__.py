"""mor-edge: Mixture-of-Ranks one-step diffusion super-resolution, from PyTorch to edge runtimes.

Imports are lazy (PEP 562): `import mor_edge` loads no PyTorch, so a runtime-only install
(`pip install "mor-edge[onnx]"`) can run artifacts; the reference classes below load PyTorch
when first touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.3.0"

_EXPORTS = {
    "load_model": "builtin",
    "MoRConfig": "config",
    "MoRSRConfig": "config",
    "sd21_config": "config",
    "tiny_config": "config",
    "DegradationEstimator": "degradation",
    "inject_mor": "injection",
    "MoRSR": "model",
    "MoRConv2d": "mor_layers",
    "MoRLayer": "mor_layers",
    "MoRLinear": "mor_layers",
    "Buckets": "routing",
    "Routing": "routing",
    "apply_routing": "routing",
    "load_balancing_loss": "routing",
    "routing_stats": "routing",
}

__all__ = [
    "Buckets",
    "DegradationEstimator",
    "MoRConfig",
    "MoRConv2d",
    "MoRLayer",
    "MoRLinear",
    "MoRSR",
    "MoRSRConfig",
    "Routing",
    "apply_routing",
    "inject_mor",
    "load_balancing_loss",
    "load_model",
    "routing_stats",
    "sd21_config",
    "tiny_config",
]

if TYPE_CHECKING:
    from .builtin import load_model
    from .config import MoRConfig, MoRSRConfig, sd21_config, tiny_config
    from .degradation import DegradationEstimator
    from .injection import inject_mor
    from .model import MoRSR
    from .mor_layers import MoRConv2d, MoRLayer, MoRLinear
    from .routing import Buckets, Routing, apply_routing, load_balancing_loss, routing_stats


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mor_edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
