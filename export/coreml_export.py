"""The Core ML target: an ML Program `.mlpackage` per stage.

Conversion traces the stage with `torch.jit.trace` (the diffusers VAE and UNet convert
cleanly that way; `torch.export` is not used) and converts with coremltools to an ML Program,
iOS 17 by default, iOS 18 where a stage holds several functions. Compute precision FP16
(default) or FP32. Attention stays in diffusers' standard form (matmul + softmax): the
Neural Engine "split einsum" rewrite is not done (see the README).

Static routing keeps the LoRA branch unmerged and sliced to the S shared + k selected ranks
of each bucket, so every bucket's function has byte-identical base weights; the functions are
saved as one multifunction package (`ct.utils.save_multifunction` stores identical weights
once). Dynamic routing is one function taking `s`.

Compression: `w8` (8-bit symmetric linear weights, data-free), `palette6` (6-bit k-means
palettization), `w8a8` (adds activation quantization, which calibrates by running Core ML:
macOS only, refused elsewhere with `CoreMLUnavailable`).

Validation that needs no Core ML runtime: inputs/outputs against the stage spec, every
PyTorch weight against the package's (dequantized) weights, an op inventory with ops the
Neural Engine is not expected to run flagged, package sizes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mor_edge.calib.calibration_set import CalibrationSet
from mor_edge.errors import UserError
from mor_edge.runtimes.coreml_runtime import package_signature, require_macos
from mor_edge.stage_contract import StageSpec

from .capabilities import Capabilities, ExportSettings
from .manifest import size_bytes
from .stages import example_inputs

# coremltools logs, at import, that its macOS-only runtime libraries are missing: expected
# here, and said once, plainly, by `require_macos` where it matters.
logging.getLogger("coremltools").setLevel(logging.ERROR)

PRECISIONS = ("fp16", "fp32", "w8", "palette6", "w8a8")
# Ops that index or sort with data-dependent values: Apple's Neural Engine runs static-shape
# fp16 convolutions, matmuls and element-wise ops; these fall back to the CPU (a heuristic
# from Apple's Core ML performance guidance, not a per-device guarantee).
NOT_ON_NEURAL_ENGINE = frozenset(
    {
        "topk",
        "argsort",
        "gather",
        "gather_nd",
        "gather_along_axis",
        "scatter",
        "scatter_nd",
        "non_zero",
        "cumsum",
    }
)
# Largest accepted max|torch - coreml| / max|torch| per tensor. 8-bit linear: half a step of
# 1/127 plus fp16 rounding. 6-bit k-means palettes spend few of their 64 entries on the tails,
# so the worst element can sit far from its entry (measured up to 0.073 on the tiny model).
WEIGHT_TOLERANCE = {"fp32": 1e-6, "fp16": 1e-3, "w8": 1.0 / 127, "palette6": 0.15, "w8a8": 1.0 / 127}
# Below FP16's smallest normal number values are stored at a fixed absolute step (2^-24), so a
# tensor made only of such values (a norm bias that training left near zero) is judged on the
# scale of that number, not of its own maximum (every precision but fp32 stores FP16).
FP16_NORMAL = float(np.finfo(np.float16).tiny)


def _quiet() -> None:
    warnings.filterwarnings("ignore", module="coremltools")


class CoreMLTarget:
    name = "coreml"
    suffix = ".mlpackage"
    capabilities = Capabilities(
        precisions=PRECISIONS,
        default_precision="fp16",
        static_weights="sliced",  # identical base weights in every bucket's function
        multifunction=True,
        resize="matmul",  # Core ML has no bicubic resize op
        quantizer="target",  # coremltools compresses inside the conversion
        batched=False,  # one tile per call: batched Core ML packages were never run (no macOS here)
    )

    def __init__(self, deployment_target: str = "iOS17") -> None:
        import coremltools as ct

        if not hasattr(ct.target, deployment_target):
            raise UserError(f"unknown Core ML deployment target {deployment_target!r}")
        self.deployment_target = deployment_target
        self.reports: dict[str, dict[str, Any]] = {}
        self.calibration: CalibrationSet | None = None  # for w8a8: the set and its routing
        self.routing = "static"

    def configure(self, settings: ExportSettings) -> None:
        self.calibration, self.routing = settings.calibration, settings.routing
        if settings.combine_variants:
            self.deployment_target = "iOS18"  # multifunction packages need iOS 18

    def describe(self) -> dict[str, object]:
        import coremltools as ct

        return {
            "coremltools": ct.__version__,
            "conversion": "torch.jit.trace -> ct.convert (mlprogram)",
            "deployment_target": self.deployment_target,
        }

    def export_stage(
        self,
        module: nn.Module,
        spec: StageSpec,
        path: Path,
        precision: str = "fp16",
        deployment: str | None = None,
    ) -> list[Path]:
        import coremltools as ct

        _quiet()
        # coremltools draws a progress bar per conversion pass; they would bury the export's own
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module.eval(), example_inputs(spec), check_trace=False)  # type: ignore[no-untyped-call]
            model = ct.convert(
                traced,
                inputs=[ct.TensorType(name=t.name, shape=t.shape, dtype=np.float32) for t in spec.inputs],
                outputs=[ct.TensorType(name=t.name, dtype=np.float32) for t in spec.outputs],
                convert_to="mlprogram",
                minimum_deployment_target=getattr(ct.target, deployment or self.deployment_target),
                compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            )
            model = compress(model, precision, self._samples(spec) if precision == "w8a8" else None)
        model.save(str(path))
        spec.check_io(package_signature(ct.models.MLModel(str(path), skip_model_load=True)), path.name)
        weights = compare_weights(
            module, path, WEIGHT_TOLERANCE[precision], 1e-12 if precision == "fp32" else FP16_NORMAL
        )
        self.reports[path.name] = {
            "validation": {"weights": weights, "ops": op_inventory(path), "size_bytes": size_bytes(path)}
        }
        bad = weights["mismatched"]
        if bad:
            raise RuntimeError(f"{path.name}: converted weights differ from PyTorch: {bad[:5]}")
        return [path]

    def _samples(self, spec: StageSpec) -> list[dict[str, np.ndarray]]:
        """A stage's calibration inputs (all buckets: activation ranges are shared by every
        function of a stage), as coremltools' sample data."""
        from mor_edge.calib.feeders import coreml_sample_data

        if self.calibration is None:
            return []
        return coreml_sample_data(self.calibration.stage_inputs(spec, self.routing))

    def combine_variants(self, paths: list[Path], out: Path, functions: list[str]) -> None:
        """One multifunction package from single-function ones (identical weights stored once)."""
        import coremltools as ct

        _quiet()
        desc = ct.utils.MultiFunctionDescriptor()
        for path, function in zip(paths, functions, strict=True):
            desc.add_function(str(path), src_function_name="main", target_function_name=function)
        desc.default_function_name = functions[0]
        with contextlib.redirect_stderr(io.StringIO()):
            ct.utils.save_multifunction(desc, str(out))


def compress(model: Any, precision: str, samples: list[dict[str, np.ndarray]] | None = None) -> Any:
    """`w8` (8-bit linear weights) and `palette6` (6-bit k-means) are data-free; `w8a8`
    first calibrates activation ranges by running the model on `samples` (macOS only), then
    quantizes the weights like `w8`."""
    import coremltools.optimize.coreml as cto

    if precision == "w8a8":
        require_macos("W8A8 activation calibration (coremltools runs the model on sample data)")
        if not samples:
            raise UserError("W8A8 needs calibration samples for every stage it quantizes")
        config = cto.OptimizationConfig(global_config=cto.experimental.OpActivationLinearQuantizerConfig())
        model = cto.experimental.linear_quantize_activations(model, config, samples)
    if precision in ("w8", "w8a8"):
        config = cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
        )
        return cto.linear_quantize_weights(model, config)
    if precision == "palette6":
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=6))
        return cto.palettize_weights(model, config)
    return model


def _program(path: Path) -> Any:
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.models.utils import _convert_model_spec_to_pymil_prog

    model = ct.models.MLModel(str(path), skip_model_load=True)
    return _convert_model_spec_to_pymil_prog(model, model.get_spec().specificationVersion, milproto_load)


def package_weights(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """function -> {const name: value}, compressed weights dequantized (materialized)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for fname, function in _program(path).functions.items():
        weights: dict[str, np.ndarray] = {}
        for op in function.operations:
            if op.op_type.startswith("constexpr_"):
                weights[op.outputs[0].name] = np.asarray(op.materialized_val_inference(), dtype=np.float32)
            elif op.op_type == "const" and op.val.val is not None and np.ndim(op.val.val) >= 1:
                value = np.asarray(op.val.val)
                if value.dtype.kind == "f":
                    weights[op.outputs[0].name] = value.astype(np.float32)
        out[fname] = weights
    return out


def _core_ml_name(torch_name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", torch_name)


def relative_error(got: np.ndarray, ref: np.ndarray, scale_floor: float) -> float:
    """max |got - ref| / max |ref|, the scale not below `scale_floor` (see FP16_NORMAL)."""
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), scale_floor))


def compare_weights(
    module: nn.Module, path: Path, tolerance: float, scale_floor: float = 1e-12
) -> dict[str, Any]:
    """Every float PyTorch tensor of `module` that the package holds under its traced name,
    compared elementwise: `relative_error` per tensor."""
    reference = {
        _core_ml_name(k): v.detach().float().numpy()
        for k, v in module.state_dict().items()
        if v.is_floating_point()
    }
    worst, compared, mismatched = 0.0, 0, []
    for weights in package_weights(path).values():
        by_base = {
            re.sub(r"(_to_fp16|_palettized|_quantized|_cast_fp16)+$", "", k): v for k, v in weights.items()
        }
        for name, ref in reference.items():
            got = by_base.get(name)
            if got is None or got.shape != ref.shape:
                continue
            error = relative_error(got, ref, scale_floor)
            worst = max(worst, error)
            compared += 1
            if error > tolerance:
                mismatched.append(f"{name}: relative error {error:.3g} > {tolerance:.3g}")
    return {
        "compared": compared,
        "max_relative_error": worst,
        "tolerance": tolerance,
        "mismatched": mismatched,
    }


def op_inventory(path: Path) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for function in _program(path).functions.values():
        for op in function.operations:
            counts[op.op_type] = counts.get(op.op_type, 0) + 1
    flagged = sorted(op for op in counts if op in NOT_ON_NEURAL_ENGINE)
    return {"counts": dict(sorted(counts.items())), "not_on_neural_engine": flagged}
