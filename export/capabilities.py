"""What each export target supports, declared once, and the interfaces the exporter calls.

The exporter reads a target's `Capabilities` and never probes it: the precisions it takes,
the default one, how static routing lays out weights, whether a stage's variants become the
functions of one file, how bicubic resizing and GroupNorm are written, and who quantizes. What an export
decides (routing, precision, calibration, whether variants are combined) reaches the target
through `configure`, not by setting its attributes from outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from torch import nn

from mor_edge.stage_contract import StageSpec

if TYPE_CHECKING:
    from mor_edge.calib.calibration_set import CalibrationSet

    from .int8 import Sample


@dataclass(frozen=True)
class Capabilities:
    precisions: tuple[str, ...]
    default_precision: str = "fp32"
    # static routing: each bucket's experts merged into the weights ("folded"), or the LoRA
    # branch kept and sliced to the shared + selected ranks, base weights identical ("sliced")
    static_weights: Literal["folded", "sliced"] = "folded"
    multifunction: bool = False  # a stage's variants become functions of one file
    resize: Literal["native", "matmul"] = "native"  # bicubic as a resize op, or as matmuls
    # GroupNorm as the exporter writes it (reshape + normalisation), or as per-channel
    # reductions that never reshape the feature map (export/group_norm.py)
    norm: Literal["native", "reductions"] = "native"
    # who quantizes "int8"/"w8": the shared ONNX path of int8.py ("shared"), or the target
    # inside its own export_stage ("target")
    quantizer: Literal["shared", "target"] = "shared"
    batched: bool = True  # image stages may take several tiles per call (`--batch`)


@dataclass(frozen=True)
class ExportSettings:
    """What one export decided, handed to the target before any stage is written."""

    routing: str
    precision: str
    calibration: CalibrationSet | None
    combine_variants: bool  # static buckets that become functions of one file


class Target(Protocol):
    name: str
    suffix: str
    capabilities: Capabilities
    reports: dict[str, dict[str, Any]]  # per written file, validation made without running it

    def describe(self) -> dict[str, object]: ...

    def configure(self, settings: ExportSettings) -> None: ...

    def export_stage(
        self, module: nn.Module, spec: StageSpec, path: Path, precision: str = "fp32"
    ) -> list[Path]: ...


class QuantizingTarget(Target, Protocol):
    """A target on the shared INT8 path (`capabilities.quantizer == "shared"`)."""

    def quantize_stage(
        self, source: Path, path: Path, samples: list[Sample], float_nodes: set[str]
    ) -> None: ...

    def runner(self, path: Path) -> Callable[[Sample], np.ndarray]: ...

    def finish(self, path: Path, spec: StageSpec) -> list[Path]: ...


class WeightCompressingTarget(QuantizingTarget, Protocol):
    """A shared-path target that also offers weight-only INT8 ("w8")."""

    def compress_weights(self, source: Path, path: Path, float_nodes: set[str]) -> None: ...


class MultifunctionTarget(Target, Protocol):
    """A target whose capabilities say `multifunction`."""

    def combine_variants(self, paths: list[Path], out: Path, functions: list[str]) -> None: ...
