"""The runtime interface every target implements, and the pipeline they all share."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mor_edge.export.manifest import Artifact, ArtifactError

from mor_edge.errors import UserError
from mor_edge.routing import nearest_centre
from mor_edge.tiling import TileInputs


@dataclass
class PipelineResult:
    sr: np.ndarray  # (1, 3, H, W) in [0, 1]
    s: np.ndarray  # (1, K)
    bucket: int | None  # static routing only


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Runtime(abc.ABC):
    """Loads an artifact's stage files on one runtime and runs them.

    Subclasses implement `_load` (file -> session) and `_run` (session, inputs -> outputs);
    stage selection, static bucket choice, the I/O check and the pipeline are shared."""

    name = "runtime"
    multifunction = False  # loads one function of a multi-function file (Core ML)

    def __init__(self, artifact: Artifact, threads: int | None = None) -> None:
        self.artifact = artifact
        self.threads = threads or usable_cores()
        self._sessions: dict[Any, Any] = {}

    @abc.abstractmethod
    def _load(self, path: Path, function: str | None) -> Any: ...

    @abc.abstractmethod
    def _run(self, session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def describe(self) -> dict[str, Any]:
        """What was run, for reports: runtime, version, threads."""
        return {"runtime": self.name, "threads": self.threads}

    def io_shapes(self, session: Any) -> dict[str, tuple[int, ...]] | None:
        """Name -> shape of a loaded stage's inputs and outputs, for the check against the
        manifest; None where the runtime cannot say without running (Core ML off macOS)."""
        return None

    def session(self, stage: str, bucket: int | None = None) -> Any:
        """The loaded stage file, refused unless its inputs and outputs are the manifest's
        (a swapped or foreign graph fails here, not in the middle of a run)."""
        path, function = self.artifact.stage_file(stage, bucket)
        if (path, function) not in self._sessions:
            rel = path.relative_to(self.artifact.folder)
            if function is not None and not self.multifunction:
                raise ArtifactError(f"{self.artifact.folder}: {rel} names a function; {self.name} has none")
            try:
                session = self._load(path, function)
            except UserError:
                raise
            except Exception as exc:  # each runtime raises its own types for a bad file
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise ArtifactError(f"{self.artifact.folder}: {rel} does not load ({first})") from None
            entry = self.artifact.checked.stages[stage]
            want = {t.name: tuple(t.shape) for t in (*entry.inputs, *entry.outputs)}
            have = self.io_shapes(session)
            if have is not None and have != want:
                raise ArtifactError(
                    f"{self.artifact.folder}: {rel} takes and gives {have}, but the manifest's {stage} "
                    f"stage is {want}"
                )
            self._sessions[path, function] = session
        return self._sessions[path, function]

    def run_stage(self, stage: str, inputs: dict[str, np.ndarray], bucket: int | None = None) -> np.ndarray:
        """Run one stage (the bucket's variant in static mode); returns its single output."""
        return self._run(self.session(stage, bucket), inputs)[0]

    def bucket_of(self, s: np.ndarray) -> int | None:
        if self.artifact.routing != "static":
            return None
        return int(nearest_centre(s, self.artifact.bucket_centres)[0])

    def lr_shape(self) -> tuple[int, ...]:
        return tuple(self.artifact.stage("router")["inputs"][0]["shape"])

    # -- the TileEngine interface (mor_edge.tiling) -----------------------------------
    @property
    def scale(self) -> int:
        return int(self.artifact.manifest["scale"])

    @property
    def router_size(self) -> int:
        return int(self.lr_shape()[2])

    @property
    def margin(self) -> int:
        return int(self.artifact.manifest.get("colour", {}).get("tile_margin", 0))

    @property
    def tile_size(self) -> int:
        """Artifacts have fixed shapes: they upscale tiles of exactly their LR size."""
        return int(self.lr_shape()[2])

    def _check(self, lr: np.ndarray) -> np.ndarray:
        if tuple(lr.shape) != self.lr_shape():
            raise UserError(f"this artifact takes inputs of shape {self.lr_shape()}, got {tuple(lr.shape)}")
        return lr.astype(np.float32)

    def route(self, lr: np.ndarray) -> np.ndarray:
        """Degradation scores (1, K) of an LR image of the artifact's input size."""
        return self.run_stage("router", {"lr": self._check(lr)})

    def run(self, lr: np.ndarray, s: np.ndarray) -> np.ndarray:
        """SR of one LR tile, routed on `s` (its bucket in static mode)."""
        lr = self._check(lr)
        bucket = self.bucket_of(s)
        routed = {"s": s.astype(np.float32)} if self.artifact.routing == "dynamic" else {}
        latent = self.run_stage("encoder", {"lr": lr, **routed}, bucket)
        x0 = self.run_stage("unet", {"latent": latent, **routed}, bucket)
        return self.run_stage("decoder", self.decoder_inputs(x0, lr))

    def decoder_inputs(self, x0: np.ndarray, lr: np.ndarray) -> dict[str, np.ndarray]:
        """The decoder takes the LR image too where the model has a colour step or residual."""
        names = {t["name"] for t in self.artifact.stage("decoder")["inputs"]}
        return {"x0": x0, **({"lr": lr} if "lr" in names else {})}

    def passes(self) -> int:
        return 0

    def prepare(self, tiles: TileInputs) -> None:  # noqa: B027 (a deliberate no-op, not abstract)
        """Fixed graphs normalise each tile on its own statistics: nothing to gather."""

    def pipeline(self, lr: np.ndarray) -> PipelineResult:
        """One LR image (1, 3, h, w) in [0, 1] -> SR, routing on the router's `s`."""
        s = self.route(lr)
        return PipelineResult(sr=self.run(lr, s), s=s, bucket=self.bucket_of(s))


def load_runtime(folder: str | Path, threads: int | None = None) -> Runtime:
    """Verify the artifact and open it on the runtime its target needs."""
    artifact = Artifact(folder)
    if artifact.target == "onnx":
        try:
            from .ort_runtime import OrtRuntime
        except ImportError:
            raise ArtifactError(
                f"{folder}: ONNX artifacts need onnxruntime, which is not installed "
                "(pip install 'mor-edge[onnx]')"
            ) from None
        return OrtRuntime(artifact, threads)
    if artifact.target == "coreml":
        from .coreml_runtime import CoreMLRuntime

        return CoreMLRuntime(artifact, threads)
    if artifact.target == "openvino":
        try:
            from .openvino_runtime import OpenVinoRuntime
        except ImportError:
            raise ArtifactError(
                f"{folder}: OpenVINO artifacts need openvino, which is not installed "
                "(pip install 'mor-edge[openvino]')"
            ) from None
        return OpenVinoRuntime(artifact, threads)
    raise ArtifactError(f"{folder}: no runtime for target {artifact.target!r} in this mor-edge")
