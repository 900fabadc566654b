"""The artifact manifest's schema (pydantic): what `Artifact` checks before it trusts a
manifest. Types, ranges and required keys are declared; the rules that tie fields together
(every variant file listed, bucket indices in range, stage inputs that agree) are validators.

Every bound here stops a tampered manifest from driving work: shapes are capped before any
allocation, file names are confined to the artifact folder by construction (relative, no
`..`, no backslash), bucket centres are finite.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from mor_edge.schema import Real, Sha256, schema_error

SCHEMA_VERSION = 1
TARGETS = ("onnx", "openvino", "coreml", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "w8", "w8a8", "palette6")
STAGE_NAMES = ("router", "encoder", "unet", "decoder")
MAX_SIDE = 4096  # of any image or latent tensor a stage takes
MAX_ELEMENTS = 64 * 1024 * 1024  # per tensor: 256 MB of float32
MAX_SCALE = 16
MAX_BUCKETS = 4096


def relative_file(name: str) -> str:
    """A file name inside the artifact: relative, forward slashes, no `..` or empty parts."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\0" in name
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ValueError(f"{name!r} is not a plain relative path inside the artifact")
    return name


RelativeFile = Annotated[str, AfterValidator(relative_file)]
Dim = Annotated[StrictInt, Field(ge=1, le=MAX_SIDE)]


Score = Annotated[Real, Field(ge=-1e3, le=1e3)]


class Entry(BaseModel):
    """An object of the manifest: keys beyond the checked ones are kept (reports, versions)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class TensorEntry(Entry):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    shape: Annotated[list[Dim], Field(min_length=1, max_length=6)]
    dtype: Literal["float32", "float16", "int64", "int32", "uint8"] = "float32"

    @model_validator(mode="after")
    def _bounded(self) -> TensorEntry:
        if math.prod(self.shape) > MAX_ELEMENTS:
            raise ValueError(f"shape {self.shape} is over {MAX_ELEMENTS} elements")
        return self


class Variant(Entry):
    file: RelativeFile
    function: Annotated[str, Field(min_length=1, max_length=64)] | None = None  # Core ML multifunction
    buckets: list[Annotated[StrictInt, Field(ge=0, lt=MAX_BUCKETS)]] | None = None


class StageEntry(Entry):
    inputs: Annotated[list[TensorEntry], Field(min_length=1, max_length=4)]
    outputs: Annotated[list[TensorEntry], Field(min_length=1, max_length=4)]
    precision: Literal[PRECISIONS]  # type: ignore[valid-type]
    variants: Annotated[list[Variant], Field(min_length=1, max_length=MAX_BUCKETS)]
    bucket_variant: list[Annotated[StrictInt, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _indices(self) -> StageEntry:
        if self.bucket_variant is not None and any(i >= len(self.variants) for i in self.bucket_variant):
            raise ValueError(f"bucket_variant points past the {len(self.variants)} variants")
        return self


class Routing(Entry):
    mode: Literal["static", "dynamic", "base"]
    buckets: (
        Annotated[
            list[Annotated[list[Score], Field(min_length=1, max_length=64)]], Field(max_length=MAX_BUCKETS)
        ]
        | None
    ) = None


class ModelEntry(Entry):
    name: str
    hash: Sha256
    source: str
    label: str = ""


class Colour(Entry):
    tile_margin: Annotated[StrictInt, Field(ge=0, le=1024)] = 0
    denoise: Annotated[Real, Field(ge=0, le=1)] | None = None  # absent before 0.3.0


class Manifest(Entry):
    schema_version: Annotated[StrictInt, Field(ge=SCHEMA_VERSION, le=SCHEMA_VERSION)]
    target: Literal[TARGETS]  # type: ignore[valid-type]
    precision: Literal[PRECISIONS]  # type: ignore[valid-type]
    routing: Routing
    model: ModelEntry
    scale: Annotated[StrictInt, Field(ge=1, le=MAX_SCALE)]
    stages: dict[Literal[STAGE_NAMES], StageEntry]  # type: ignore[valid-type]
    files: dict[RelativeFile, Sha256]
    colour: Colour | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        missing = [s for s in STAGE_NAMES if s not in self.stages]
        if missing:
            raise ValueError(f"no {', '.join(missing)} stage")
        for name, stage in self.stages.items():
            for variant in stage.variants:
                if variant.file not in self.files and not any(
                    f.startswith(variant.file + "/") for f in self.files
                ):
                    raise ValueError(f"stage {name} file {variant.file} is not listed in files")
        router = self.stages["router"].inputs[0]
        if router.name != "lr" or len(router.shape) != 4 or router.shape[:2] != [1, 3]:
            raise ValueError(f"the router takes lr (1, 3, h, w), not {router.name} {router.shape}")
        batches = {
            t.shape[0]
            for name in ("encoder", "unet", "decoder")
            for t in (*self.stages[name].inputs, *self.stages[name].outputs)
            if t.name != "s"
        }
        if len(batches) != 1:
            raise ValueError(f"the image stages take one batch of tiles, not {sorted(map(str, batches))}")
        if self.routing.mode == "static":
            buckets = self.routing.buckets
            if not buckets or len({len(b) for b in buckets}) != 1:
                raise ValueError("static routing needs bucket centres of one width")
            for name in ("encoder", "unet"):
                mapping = self.stages[name].bucket_variant
                if mapping is not None and len(mapping) != len(buckets):
                    raise ValueError(
                        f"stage {name}: bucket_variant has {len(mapping)} entries for {len(buckets)} buckets"
                    )
        return self


def validate_manifest(data: Any, where: str) -> Manifest:
    """The manifest as a checked `Manifest`; a one-line error naming `where` and the field."""
    from .manifest import ArtifactError

    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(schema_error(exc, where)) from None
    except RecursionError:
        raise ArtifactError(f"{where}: nested too deeply") from None
