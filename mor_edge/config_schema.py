"""The schema of a model folder's `config.json` (pydantic), checked before a model is built.

Bounds are generous for real models (SD 2.1 uses up to 1280 UNet channels and 512 VAE
channels) and stop a hostile or mistyped config from allocating hundreds of gigabytes or
dividing by zero. Keys beyond the ones checked here are passed to diffusers as they are.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from .errors import UserError
from .schema import Real, schema_error

Channels = Annotated[StrictInt, Field(ge=1, le=2048)]
Count = Annotated[StrictInt, Field(ge=1, le=16)]
Name = Annotated[str, Field(max_length=200)]


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VaeConfig(Open):
    in_channels: Annotated[StrictInt, Field(ge=1, le=4)] = 3
    out_channels: Annotated[StrictInt, Field(ge=1, le=4)] = 3
    block_out_channels: Annotated[list[Channels], Field(min_length=1, max_length=6)] = [64]
    layers_per_block: Count = 1
    latent_channels: Annotated[StrictInt, Field(ge=1, le=64)] = 4
    norm_num_groups: Annotated[StrictInt, Field(ge=1, le=256)] = 32
    scaling_factor: Annotated[Real, Field(gt=0, le=100)] = 0.18215


class UnetConfig(Open):
    in_channels: Annotated[StrictInt, Field(ge=1, le=64)] = 4
    out_channels: Annotated[StrictInt, Field(ge=1, le=64)] = 4
    block_out_channels: Annotated[list[Channels], Field(min_length=1, max_length=6)] = [320]
    layers_per_block: Count | list[Count] = 2
    cross_attention_dim: Annotated[StrictInt, Field(ge=1, le=4096)] = 1024
    attention_head_dim: (
        Annotated[StrictInt, Field(ge=1, le=512)] | list[Annotated[StrictInt, Field(ge=1, le=512)]]
    ) = 8
    norm_num_groups: Annotated[StrictInt, Field(ge=1, le=256)] = 32


class ClipVisionConfig(Open):
    hidden_size: Annotated[StrictInt, Field(ge=1, le=4096)] = 768
    intermediate_size: Annotated[StrictInt, Field(ge=1, le=16384)] = 3072
    projection_dim: Annotated[StrictInt, Field(ge=1, le=4096)] = 512
    num_hidden_layers: Annotated[StrictInt, Field(ge=1, le=64)] = 12
    num_attention_heads: Annotated[StrictInt, Field(ge=1, le=64)] = 12
    image_size: Annotated[StrictInt, Field(ge=8, le=1024)] = 224
    patch_size: Annotated[StrictInt, Field(ge=1, le=256)] = 32


class MoRSchema(Closed):
    rank: Annotated[StrictInt, Field(ge=1, le=512)] = 40
    shared: Annotated[StrictInt, Field(ge=0, le=511)] = 8
    zero_slots: Annotated[StrictInt, Field(ge=0, le=64)] = 4
    top_k: Annotated[StrictInt, Field(ge=1, le=576)] = 8
    alpha: Annotated[Real, Field(ge=0, le=1e4)] = 40.0
    unet_targets: Annotated[list[Name], Field(max_length=64)] | None = None
    encoder_targets: Annotated[list[Name], Field(max_length=64)] | None = None
    balance_alpha: Annotated[Real, Field(ge=0, le=100)] = 0.01


class ModelConfigSchema(Closed):
    name: Name = "tiny"
    label: Annotated[str, Field(max_length=1000)] = ""
    lr_size: Annotated[StrictInt, Field(ge=8, le=1024, multiple_of=8)] = 64
    scale: Annotated[StrictInt, Field(ge=1, le=8)] = 4
    vae: VaeConfig
    unet: UnetConfig
    clip_vision: ClipVisionConfig
    prompt_pairs: (
        Annotated[
            list[Annotated[list[Name], Field(min_length=3, max_length=3)]], Field(min_length=1, max_length=16)
        ]
        | None
    ) = None
    prompt: Annotated[str, Field(max_length=1000)] = ""
    prompt_length: Annotated[StrictInt, Field(ge=1, le=77)] = 77
    mor: MoRSchema = MoRSchema()
    adapt_encoder: StrictBool = True
    timestep: Annotated[StrictInt, Field(ge=0, le=9999)] = 999
    beta_start: Annotated[Real, Field(gt=0, lt=1)] = 0.00085
    beta_end: Annotated[Real, Field(gt=0, lt=1)] = 0.012
    beta_schedule: Name = "scaled_linear"
    num_train_timesteps: Annotated[StrictInt, Field(ge=1, le=10000)] = 1000
    prediction_type: Name = "epsilon"
    seed: StrictInt = 0
    colour_fix: Name = "wavelet"
    colour_levels: Annotated[StrictInt, Field(ge=1, le=8)] = 2
    denoise: Annotated[Real, Field(ge=0, le=1)] = 0.0
    residual: StrictBool = False
    estimator_input: Name = "rgb"


def check_config(data: Any, where: str) -> dict[str, Any]:
    """`data` (parsed config.json) if it passes the schema; else a one-line UserError naming
    `where` and the field."""
    try:
        ModelConfigSchema.model_validate(data)
    except ValidationError as exc:
        raise UserError(schema_error(exc, where)) from None
    if data.get("timestep", 999) >= data.get("num_train_timesteps", 1000):
        raise UserError(f"{where}: field timestep: must be below num_train_timesteps")
    return dict(data)
