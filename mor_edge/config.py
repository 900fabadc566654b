"""Configuration dataclasses and presets.

Everything a model needs to be rebuilt lives in `MoRSRConfig`, which round-trips
through `config.json`; the weights live next to it in `model.safetensors`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"  # a model folder: this config ...
WEIGHTS_NAME = "model.safetensors"  # ... and its weights

# OSEDiff's LoRA target modules (arXiv 2406.08177, its training script), matched as
# module-name suffixes. The VAE decoder is never adapted.
UNET_TARGET_MODULES: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "conv",
    "conv_in",
    "conv_out",
)
ENCODER_TARGET_MODULES: tuple[str, ...] = (
    "conv_in",
    "conv1",
    "conv2",
    "conv_shortcut",
    "conv",
    "conv_out",
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
)

COLOUR_FIXES = ("wavelet", "adain", "none")  # see mor_edge.colour
ESTIMATOR_INPUTS = ("rgb", "highpass")  # see mor_edge.degradation


def support(levels: int) -> int:
    """How far (pixels) an output pixel of the wavelet colour step reaches into its neighbours:
    a-trous levels of a 3x3 blur with dilations 1, 2, 4, ..."""
    return 2**levels - 1


# CLIP-IQA style antonym prompt pairs: (positive, negative, short name). The score of a
# pair is the probability of the negative prompt, so higher means more degraded.
DEFAULT_PROMPT_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("Sharp photo.", "Blurry photo.", "blur"),
    ("Noise-free photo.", "Noisy photo.", "noise"),
    ("Clean photo.", "JPEG compressed photo.", "jpeg"),
    ("High resolution photo.", "Low resolution photo.", "resolution"),
)


@dataclass
class MoRConfig:
    """Shape of every MoR adapter: R ranks, S shared, E = R - S routed, Z zero slots, top-k."""

    rank: int = 40
    shared: int = 8
    zero_slots: int = 4
    top_k: int = 8
    alpha: float = 40.0
    unet_targets: tuple[str, ...] = UNET_TARGET_MODULES
    encoder_targets: tuple[str, ...] = ENCODER_TARGET_MODULES
    balance_alpha: float = 0.01

    def __post_init__(self) -> None:
        self.unet_targets = tuple(self.unet_targets)
        self.encoder_targets = tuple(self.encoder_targets)
        if self.rank < 1 or not 0 <= self.shared < self.rank:
            raise ValueError(f"need 0 <= shared < rank, got shared={self.shared} rank={self.rank}")
        if self.zero_slots < 0:
            raise ValueError(f"zero_slots must be >= 0, got {self.zero_slots}")
        if not 1 <= self.top_k <= self.routed + self.zero_slots:
            raise ValueError(
                f"top_k must be in [1, routed + zero_slots = {self.routed + self.zero_slots}], "
                f"got {self.top_k}"
            )

    @property
    def routed(self) -> int:
        """E, the number of routed rank-1 experts."""
        return self.rank - self.shared

    @property
    def slots(self) -> int:
        """E + Z, the number of gate logits."""
        return self.routed + self.zero_slots

    @property
    def scale(self) -> float:
        """LoRA scaling alpha / R, as PEFT applies it."""
        return self.alpha / self.rank


@dataclass
class MoRSRConfig:
    """The whole one-step SR model: component configs, MoR shape, scheduler constants."""

    name: str = "tiny"
    label: str = ""
    lr_size: int = 64
    scale: int = 4
    vae: dict[str, Any] = field(default_factory=dict)
    unet: dict[str, Any] = field(default_factory=dict)
    clip_vision: dict[str, Any] = field(default_factory=dict)
    prompt_pairs: tuple[tuple[str, str, str], ...] = DEFAULT_PROMPT_PAIRS
    prompt: str = ""
    prompt_length: int = 77
    mor: MoRConfig = field(default_factory=MoRConfig)
    adapt_encoder: bool = True
    timestep: int = 999
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"
    seed: int = 0
    # Colour alignment of the SR image to the bicubic-upsampled input (`mor_edge.colour`).
    colour_fix: str = "wavelet"
    colour_levels: int = 2
    # How much of the band between the wavelet step's `colour_levels` and `colour_levels + 1`
    # blurs comes from the model rather than the bicubic input: 0 keeps the input's fine
    # texture (and its noise and JPEG blocks), 1 is the model's cleaner band (one more level).
    denoise: float = 0.0
    # The decoder's output as a residual on the bicubic-upsampled input (the built-in model;
    # off for the SD presets, whose decoder makes the whole image).
    residual: bool = False
    # What the degradation estimator sees: "rgb", CLIP's normalised colours (what a real CLIP
    # tower expects), or "highpass", the LR image minus its 3x3 binomial blur: noise, blocks
    # and the sharpness of edges without the colours and shading of the content, which a
    # small estimator trained on a few photos otherwise learns to rank by (README: Spearman).
    estimator_input: str = "rgb"

    def __post_init__(self) -> None:
        self.prompt_pairs = tuple(tuple(p) for p in self.prompt_pairs)  # type: ignore[misc]
        if isinstance(self.mor, dict):
            self.mor = MoRConfig(**self.mor)
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        if self.colour_fix not in COLOUR_FIXES:
            raise ValueError(f"colour_fix must be one of {COLOUR_FIXES}, got {self.colour_fix!r}")
        if not 1 <= self.colour_levels <= 8:
            raise ValueError(f"colour_levels must be in [1, 8], got {self.colour_levels}")
        if not 0 <= self.denoise <= 1:
            raise ValueError(f"denoise must be in [0, 1], got {self.denoise}")
        if self.estimator_input not in ESTIMATOR_INPUTS:
            raise ValueError(
                f"estimator_input must be one of {ESTIMATOR_INPUTS}, got {self.estimator_input!r}"
            )
        if self.denoise and self.colour_fix != "wavelet":
            raise ValueError(f"denoise needs the wavelet colour step, not {self.colour_fix!r}")

    @property
    def sr_size(self) -> int:
        return self.lr_size * self.scale

    @property
    def decoder_takes_lr(self) -> bool:
        """Whether the decoder stage needs the LR image (colour step or residual)."""
        return self.colour_fix != "none" or self.residual

    @property
    def colour_margin(self) -> int:
        """SR pixels at a tile's border that the colour step and the bicubic taps make differ
        from the untiled image (0 without a local colour step)."""
        if self.colour_fix != "wavelet" and not self.residual:
            return 0
        bicubic = 2 * self.scale  # two LR taps each side
        levels = self.colour_levels + (1 if self.denoise else 0)
        return bicubic + (support(levels) if self.colour_fix == "wavelet" else 0)

    @property
    def degradation_names(self) -> list[str]:
        return [p[2] for p in self.prompt_pairs]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoRSRConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> MoRSRConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def tiny_config(**overrides: Any) -> MoRSRConfig:
    """LR 64x64 -> SR 256x256, a few million parameters: tests and the built-in model."""
    config = MoRSRConfig(
        name="tiny",
        lr_size=64,
        vae=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3,
            block_out_channels=[16, 32, 48],
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=256,
            scaling_factor=0.5,
            # No self-attention in the VAE's mid blocks: at a 64x64 tile it was a third of the
            # pipeline's MACs, and its cost grows with the square of the tile (see README).
            mid_block_add_attention=False,
        ),
        unet=dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
            block_out_channels=[32, 64],
            layers_per_block=1,
            cross_attention_dim=64,
            # diffusers reads this as the head count: one head of 64 channels. Eight heads of 8
            # made the softmaxes over a tile's 1024 latent positions 8x larger: the UNet took
            # 1.5-1.7x as long (README).
            attention_head_dim=1,
            norm_num_groups=16,
            use_linear_projection=True,
        ),
        clip_vision=dict(
            hidden_size=64,
            intermediate_size=128,
            projection_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
        ),
        prompt_length=8,
        mor=MoRConfig(rank=16, shared=4, zero_slots=4, top_k=4, alpha=16.0),
        residual=True,
        estimator_input="highpass",
        colour_levels=1,  # trained with 2; run with 1 (measured: the only count >= bicubic on mild)
    )
    return dataclasses.replace(config, **overrides)


def sd21_config(**overrides: Any) -> MoRSRConfig:
    """The Stable Diffusion 2.1-base architecture (x4, 512x512 output) with paper MoR defaults."""
    config = MoRSRConfig(
        name="sd21",
        lr_size=128,
        vae=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[128, 256, 512, 512],
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=768,
            scaling_factor=0.18215,
        ),
        unet=dict(
            sample_size=96,
            in_channels=4,
            out_channels=4,
            down_block_types=[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ],
            up_block_types=[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ],
            block_out_channels=[320, 640, 1280, 1280],
            layers_per_block=2,
            cross_attention_dim=1024,
            attention_head_dim=[5, 10, 20, 20],
            use_linear_projection=True,
        ),
        clip_vision=dict(
            hidden_size=768,
            intermediate_size=3072,
            projection_dim=512,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        ),
        prompt_length=77,
        mor=MoRConfig(),
    )
    return dataclasses.replace(config, **overrides)


PRESETS = {"tiny": tiny_config, "sd21": sd21_config}
