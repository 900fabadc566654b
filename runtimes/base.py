"""The runtime interface every target implements, and the pipeline they all share.

What each stage takes and gives comes from the artifact's manifest, read as the stage contract
(`mor_edge.stage_contract`): stages are fed by name from what the pipeline has computed, and
each stage file's inputs and outputs are checked against its contract when it is loaded.
numpy only: a runtime-only install runs this without PyTorch.
"""

from __future__ import annotations

import abc
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mor_edge.errors import UserError
from mor_edge.export.manifest import Artifact, ArtifactError
from mor_edge.stage_contract import Signature, StageIOError, nearest_centre
from mor_edge.tiling import TileInputs


@dataclass
class PipelineResult:
    sr: np.ndarray  # (1, 3, H, W) in [0, 1]
    s: np.ndarray  # (1, K)
    bucket: int | None  # static routing only


def _fill(values: np.ndarray, batch: int) -> np.ndarray:
    """`values` padded along the batch axis to `batch` with copies of its last item."""
    return np.concatenate([values, np.repeat(values[-1:], batch - len(values), axis=0)])


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Runtime(abc.ABC):
    """Loads an artifact's stage files on one runtime and runs them.

    Subclasses implement `_load` (file -> session), `_run` (session, inputs -> outputs) and
    `signature` (session -> its inputs and outputs); stage selection, static bucket choice,
    the I/O check and the pipeline are shared."""

    name = "runtime"
    multifunction = False  # loads one function of a multi-function file (Core ML)

    def __init__(self, artifact: Artifact, threads: int | None = None) -> None:
        self.artifact = artifact
        self.specs = artifact.specs
        self.threads = threads or usable_cores()
        self._sessions: dict[tuple[Path, str | None], Any] = {}

    @abc.abstractmethod
    def _load(self, path: Path, function: str | None) -> Any: ...

    @abc.abstractmethod
    def _run(self, session: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    @abc.abstractmethod
    def signature(self, session: Any) -> tuple[Signature, Signature]:
        """A loaded stage's (inputs, outputs) as (name, shape, dtype)."""

    def describe(self) -> dict[str, Any]:
        """What was run, for reports: runtime, version, threads."""
        return {"runtime": self.name, "threads": self.threads}

    def load_graph(self, path: Path) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]], Signature]:
        """Another tool's graph file loaded with this runtime's settings (threads, optimisation
        level), unchecked: benchmarks time other exports of a model on equal terms. Returns
        its call and its inputs."""
        session = self._load(path, None)
        return functools.partial(self._run, session), self.signature(session)[0]

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
            try:
                self.specs[stage].check_io(self.signature(session), f"{self.artifact.folder}: {rel}")
            except StageIOError as exc:
                raise ArtifactError(str(exc)) from None
            self._sessions[path, function] = session
        return self._sessions[path, function]

    def run_stage(self, stage: str, values: dict[str, np.ndarray], bucket: int | None = None) -> np.ndarray:
        """Run one stage (the bucket's variant in static mode) on its inputs picked by name
        from `values`; returns its single output. Fewer tiles than the stage's batch are
        padded with copies of the last, whose outputs are dropped."""
        spec = self.specs[stage]
        feed = spec.feed(values)
        tiles, batch = feed[spec.inputs[0].name].shape[0], spec.inputs[0].shape[0]
        if tiles > batch:
            raise UserError(f"the {stage} stage takes at most {batch} tiles per call, got {tiles}")
        if tiles < batch:
            padded = {t.name for t in spec.inputs if t.shape[0] == batch}
            feed = {name: _fill(v, batch) if name in padded else v for name, v in feed.items()}
        return self._run(self.session(stage, bucket), feed)[0][:tiles]

    def bucket_of(self, s: np.ndarray) -> int | None:
        if self.artifact.routing != "static":
            return None
        return int(nearest_centre(s, self.artifact.bucket_centres)[0])

    def lr_shape(self) -> tuple[int, ...]:
        return self.specs["router"].inputs[0].shape

    # -- the TileEngine interface (mor_edge.tiling) -----------------------------------
    @property
    def scale(self) -> int:
        return self.artifact.scale

    @property
    def router_size(self) -> int:
        return int(self.lr_shape()[2])

    @property
    def margin(self) -> int:
        return self.artifact.tile_margin

    @property
    def tile_size(self) -> int:
        """Artifacts have fixed shapes: they upscale tiles of exactly their LR size."""
        return int(self.lr_shape()[2])

    @property
    def batch(self) -> int:
        """Tiles per call of the image stages, as exported."""
        return self.artifact.batch

    def _check(self, lr: np.ndarray, most: int = 1) -> np.ndarray:
        """`lr` as float32 if it holds 1 to `most` images of the artifact's input size."""
        want = self.lr_shape()
        if lr.ndim != 4 or tuple(lr.shape[1:]) != want[1:] or not 1 <= lr.shape[0] <= most:
            shape = want if most == 1 else f"(1 to {most}, {', '.join(map(str, want[1:]))})"
            raise UserError(f"this artifact takes inputs of shape {shape}, got {tuple(lr.shape)}")
        return lr.astype(np.float32)

    def route(self, lr: np.ndarray) -> np.ndarray:
        """Degradation scores (1, K) of an LR image of the artifact's input size."""
        return self.run_stage("router", {"lr": self._check(lr)})

    def run(self, lr: np.ndarray, s: np.ndarray) -> np.ndarray:
        """SR of 1 to `batch` LR tiles, all routed on one `s` (its bucket in static mode):
        each stage takes what it needs of lr, s, latent and x0."""
        values = {"lr": self._check(lr, self.batch), "s": s.astype(np.float32)}
        bucket = self.bucket_of(s)
        values["latent"] = self.run_stage("encoder", values, bucket)
        values["x0"] = self.run_stage("unet", values, bucket)
        return self.run_stage("decoder", values)

    def passes(self) -> int:
        return 0

    def prepare(self, tiles: TileInputs) -> None:  # noqa: B027 (a deliberate no-op, not abstract)
        """Fixed graphs normalise each tile on its own statistics: nothing to gather."""

    def pipeline(self, lr: np.ndarray) -> PipelineResult:
        """One LR image (1, 3, h, w) in [0, 1] -> SR, routing on the router's `s`."""
        s = self.route(lr)
        return PipelineResult(sr=self.run(lr, s), s=s, bucket=self.bucket_of(s))
