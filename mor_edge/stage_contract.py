"""The one description of the pipeline's stages: inputs, outputs, dtypes, shapes, dummy inputs
and the I/O check. Export, the manifest, every runtime, parity, calibration capture and the
benchmarks all read it; nothing else spells a stage's tensors. numpy only (runtimes use it
without PyTorch).

Stages (fixed shapes from the model config; B tiles per call, 1 unless exported with a batch):
  router   lr (1,3,h,w)                      -> s (1,K)
  encoder  lr (B,3,h,w) [+ s in dynamic mode] -> latent (B,C,H/f,W/f)   (bicubic upsample in-graph)
  unet     latent [+ s in dynamic mode]       -> x0 (B,C,H/f,W/f)
  decoder  x0 [+ lr: colour step, residual]   -> image (B,3,H,W) in [0, 1]
The router sees the whole image once and `s` stays (1,K): one routing decision covers every
tile of a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .config import MoRSRConfig

STAGES = ("router", "encoder", "unet", "decoder")
ROUTED_STAGES = ("encoder", "unet")
ROUTING_MODES = ("static", "dynamic", "base")  # base: adapters off, for comparison
UNIT_RANGE = ("lr", "s")  # dummy values in [0, 1]; the rest (latents) roughly unit normal

Signature = list[tuple[str, tuple[int, ...], str]]  # (name, shape, dtype) per tensor, in order


class StageIOError(ValueError):
    """A stage file whose inputs or outputs are not its stage's."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def dummy_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Plausible inputs, by name: images and scores in [0, 1], latents roughly unit scale."""
        rng = np.random.default_rng(seed)
        return {
            t.name: (rng.random(t.shape) if t.name in UNIT_RANGE else rng.standard_normal(t.shape)).astype(
                t.dtype
            )
            for t in self.inputs
        }

    def feed(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """This stage's inputs picked by name from everything the pipeline has computed
        (lr, s, latent, x0): a stage that does not take `s` is simply not given it."""
        missing = [t.name for t in self.inputs if t.name not in values]
        if missing:
            raise KeyError(f"{self.name} needs {', '.join(missing)}")
        return {t.name: values[t.name] for t in self.inputs}

    def signature(self) -> tuple[Signature, Signature]:
        return (
            [(t.name, t.shape, t.dtype) for t in self.inputs],
            [(t.name, t.shape, t.dtype) for t in self.outputs],
        )

    def check_io(self, found: tuple[Signature, Signature], where: str) -> None:
        """Raise `StageIOError` unless a file's (inputs, outputs) are exactly this stage's."""
        for kind, got, want in zip(("inputs", "outputs"), found, self.signature(), strict=True):
            if list(got) != want:
                raise StageIOError(f"{where}: {kind} {list(got)} are not the {self.name} stage's {want}")

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_entry(cls, name: str, inputs: Sequence[Any], outputs: Sequence[Any]) -> StageSpec:
        """From a manifest's stage entry (objects with name, shape and dtype)."""
        return cls(
            name,
            tuple(TensorSpec(t.name, tuple(t.shape), t.dtype) for t in inputs),
            tuple(TensorSpec(t.name, tuple(t.shape), t.dtype) for t in outputs),
        )


def stage_specs(config: MoRSRConfig, routing: str, batch: int = 1) -> dict[str, StageSpec]:
    """The four stages' tensors for a model config, routing mode and tiles per call."""
    if routing not in ROUTING_MODES:
        raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    k = len(config.prompt_pairs)
    vae_factor = 2 ** (len(config.vae["block_out_channels"]) - 1)
    latent_side = config.sr_size // vae_factor
    latent = TensorSpec("latent", (batch, config.vae["latent_channels"], latent_side, latent_side))
    x0 = TensorSpec("x0", latent.shape)
    lr = TensorSpec("lr", (batch, 3, config.lr_size, config.lr_size))
    s = TensorSpec("s", (1, k))
    extra = (s,) if routing == "dynamic" else ()
    return {
        "router": StageSpec("router", (TensorSpec("lr", (1, *lr.shape[1:])),), (s,)),
        "encoder": StageSpec("encoder", (lr, *extra), (latent,)),
        "unet": StageSpec("unet", (latent, *extra), (x0,)),
        "decoder": StageSpec(
            "decoder",
            (x0, *((lr,) if config.decoder_takes_lr else ())),
            (TensorSpec("image", (batch, 3, config.sr_size, config.sr_size)),),
        ),
    }


def nearest_centre(s: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The bucket rule, shared by the reference and every runtime: nearest centre by squared
    Euclidean distance in float64, ties to the lower index."""
    d = ((s.astype(np.float64)[:, None, :] - centres.astype(np.float64)[None]) ** 2).sum(-1)
    return d.argmin(axis=1)
