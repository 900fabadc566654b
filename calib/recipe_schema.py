"""The schema of a calibration set: its recipe (pydantic) and its tensors' shapes, dtypes and
values, checked before a set is used to quantize anything."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from mor_edge.errors import UserError
from mor_edge.schema import Real, Sha256, schema_error

FORMAT_VERSION = 1
MAX_SAMPLES = 100_000


class Recipe(BaseModel):
    model_config = ConfigDict(extra="allow")

    format_version: Annotated[StrictInt, Field(ge=FORMAT_VERSION, le=FORMAT_VERSION)]
    seed: Annotated[StrictInt, Field(ge=0)]
    samples: Annotated[StrictInt, Field(ge=1, le=MAX_SAMPLES)]
    sr_size: Annotated[StrictInt, Field(ge=8, le=8192)]
    model_hash: Sha256
    bucket_levels: Annotated[StrictInt, Field(ge=1, le=16)]
    buckets: Annotated[
        list[Annotated[list[Annotated[Real, Field(ge=-1e3, le=1e3)]], Field(min_length=1, max_length=64)]],
        Field(min_length=1, max_length=4096),
    ]
    routings: Annotated[list[Literal["static", "dynamic", "base"]], Field(min_length=1, max_length=3)]


def check_recipe(data: Any, where: str) -> dict[str, Any]:
    try:
        Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(schema_error(exc, where)) from None
    if len({len(b) for b in data["buckets"]}) != 1:
        raise UserError(f"{where}: field buckets: centres of different widths")
    return dict(data)


def check_tensors(tensors: dict[str, torch.Tensor], recipe: dict[str, Any], where: str) -> None:
    """Every tensor a set needs, with one row per sample, finite, buckets in range."""
    n, k, buckets = recipe["samples"], len(recipe["buckets"][0]), len(recipe["buckets"])
    want = {"lr": 4, "s": 2, "bucket": 1, "natural_bucket": 1}
    want.update({f"{r}.{name}": 4 for r in recipe["routings"] for name in ("latent", "x0")})
    for name, rank in want.items():
        t = tensors.get(name)
        if t is None:
            raise UserError(f"{where}: tensor {name} is missing")
        if t.dim() != rank or t.shape[0] != n:
            raise UserError(
                f"{where}: tensor {name} has shape {tuple(t.shape)}, expected {rank} dims and {n} rows"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{where}: tensor {name} holds NaN or infinite values")
    if tensors["s"].shape[1] != k or tensors["lr"].shape[1] != 3:
        raise UserError(f"{where}: tensors lr or s do not match the recipe's {k} scores")
    for name in ("bucket", "natural_bucket"):
        t = tensors[name]
        if t.is_floating_point() or int(t.min()) < 0 or int(t.max()) >= buckets:
            raise UserError(f"{where}: tensor {name} holds bucket indices outside 0..{buckets - 1}")
