"""mor-edge: Mixture-of-Ranks one-step diffusion super-resolution, from PyTorch to edge runtimes."""

from .builtin import load_model
from .config import MoRConfig, MoRSRConfig, sd21_config, tiny_config
from .degradation import DegradationEstimator
from .injection import inject_mor
from .model import MoRSR
from .mor_layers import MoRConv2d, MoRLayer, MoRLinear
from .routing import Buckets, Routing, apply_routing, load_balancing_loss, routing_stats

__version__ = "0.1.0"

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
