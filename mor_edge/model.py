"""MoRSR: one-step diffusion super-resolution with Mixture-of-Ranks adapters.

lr -> route (CLIP degradation vector s) -> encode (VAE encoder, MoR) -> denoise (one UNet
step at t=999, MoR) -> decode (frozen VAE decoder) -> sr. Each stage is a method with plain
tensors in and out; the export layer wraps exactly these methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from .colour import ColourStep
from .config import CONFIG_NAME, WEIGHTS_NAME, MoRSRConfig
from .degradation import DegradationEstimator
from .injection import InjectionSummary, inject_mor
from .model_folder import ModelFolderError, check_weights, read_config, read_weights, write_weights_file
from .mor_layers import MoRLayer
from .resize import BicubicUpsample
from .routing import Buckets, Routing, apply_routing, clear_routing, mor_layers


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Build modules without running weight init (the weights are loaded right after); a
    sd21-size model otherwise spends most of its load time initialising random weights."""
    names = (
        "uniform_",
        "normal_",
        "trunc_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
        "zeros_",
        "ones_",
        "constant_",
        "orthogonal_",
    )
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def alpha_bar(config: MoRSRConfig) -> float:
    """The scheduler's cumulative alpha at the fixed timestep (DDPM betas, as diffusers
    computes them in float32)."""
    n, b0, b1 = config.num_train_timesteps, config.beta_start, config.beta_end
    if config.beta_schedule == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32, device="cpu") ** 2
    elif config.beta_schedule == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float32, device="cpu")
    else:
        raise ValueError(f"unsupported beta_schedule {config.beta_schedule!r}")
    return float(torch.cumprod(1.0 - betas, dim=0)[config.timestep])


class MoRSR(nn.Module):
    """The reference model. Build with a config (random weights), `from_pretrained` or
    `from_diffusers`."""

    timestep: torch.Tensor

    def __init__(self, config: MoRSRConfig) -> None:
        super().__init__()
        self.config = config
        self.estimator = DegradationEstimator(
            config.clip_vision, len(config.prompt_pairs), input_form=config.estimator_input
        )
        self.vae = AutoencoderKL(**config.vae)
        self.unet = UNet2DConditionModel(**config.unet)
        cross_dim = self.unet.config.cross_attention_dim
        self.prompt_embeds = nn.Parameter(
            torch.randn(1, config.prompt_length, cross_dim) / math.sqrt(cross_dim), requires_grad=False
        )
        self.register_buffer("timestep", torch.tensor([config.timestep], dtype=torch.long))
        self.colour = ColourStep(config)
        self.upsampler = BicubicUpsample(config.scale)
        self.alpha_bar = alpha_bar(config)
        self._inject()

    def _inject(self) -> None:
        k = len(self.config.prompt_pairs)
        self.summaries: dict[str, InjectionSummary] = {
            "unet": inject_mor(self.unet, self.config.mor.unet_targets, self.config.mor, k)
        }
        if self.config.adapt_encoder:
            self.summaries["encoder"] = inject_mor(
                self.vae.encoder, self.config.mor.encoder_targets, self.config.mor, k
            )

    # -- layers -----------------------------------------------------------------------
    def encoder_layers(self) -> dict[str, MoRLayer]:
        return {f"vae.encoder.{n}": m for n, m in mor_layers(self.vae.encoder).items()}

    def unet_layers(self) -> dict[str, MoRLayer]:
        return {f"unet.{n}": m for n, m in mor_layers(self.unet).items()}

    def layers(self) -> dict[str, MoRLayer]:
        return {**self.encoder_layers(), **self.unet_layers()}

    # -- stages -----------------------------------------------------------------------
    def upsample(self, lr: torch.Tensor) -> torch.Tensor:
        """[0, 1] LR -> bicubic x`scale` in [-1, 1] (the encoder's input)."""
        return self.upsampler(lr).clamp(0, 1) * 2 - 1

    def route(self, lr: torch.Tensor) -> torch.Tensor:
        """Degradation vector s (N, K) from the LR image."""
        return self.estimator(lr)

    def encode(
        self, up: torch.Tensor, s: torch.Tensor | None, buckets: Buckets | None = None, form: str = "dense"
    ) -> torch.Tensor:
        """Upsampled image in [-1, 1] -> scaled latent (posterior mode). With `s` None the
        adapters keep their current state (merged for a static export)."""
        if s is not None:
            apply_routing(self.encoder_layers(), s, buckets, form)
        moments = self.vae.quant_conv(self.vae.encoder(up)) if self.vae.quant_conv else self.vae.encoder(up)
        mean = moments.chunk(2, dim=1)[0]
        return mean * self.vae.config.scaling_factor

    def denoise(
        self, z: torch.Tensor, s: torch.Tensor | None, buckets: Buckets | None = None, form: str = "dense"
    ) -> torch.Tensor:
        """One UNet step at the fixed timestep: latent -> predicted clean latent x0."""
        if s is not None:
            apply_routing(self.unet_layers(), s, buckets, form)
        n = z.shape[0]
        pred = self.unet(
            z, self.timestep.expand(n), encoder_hidden_states=self.prompt_embeds.expand(n, -1, -1)
        ).sample
        a = self.alpha_bar
        if self.config.prediction_type == "v_prediction":
            return math.sqrt(a) * z - math.sqrt(1 - a) * pred
        return (z - math.sqrt(1 - a) * pred) / math.sqrt(a)

    def decode(self, x0: torch.Tensor, lr: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latent -> SR image in [0, 1]. `lr` (the LR image in [0, 1]) feeds the
        residual skip and the colour step where the config has them."""
        c = self.config
        z = x0 / self.vae.config.scaling_factor
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        image = self.vae.decoder(z)
        if not c.decoder_takes_lr:
            return ((image + 1) / 2).clamp(0, 1)
        if lr is None:
            raise ValueError("this model's decoder needs the LR image (colour step or residual)")
        up = self.upsample(lr)
        if c.residual:
            image = image + up
        return ((self.colour(image, up) + 1) / 2).clamp(0, 1)

    def run_stages(
        self,
        lr: torch.Tensor,
        s: torch.Tensor | None = None,
        buckets: Buckets | None = None,
        adapters: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All stage outputs (s, latent, x0, SR) for LR in [0, 1]: the pipeline that `forward`
        runs and that parity compares stage by stage. With ``adapters=False`` the MoR adapters
        are off and no routing runs (the dense base); `s` is still returned."""
        if s is None:
            s = self.route(lr)
        if not adapters:
            clear_routing(self.layers())
        routed = s if adapters else None
        z = self.encode(self.upsample(lr), routed, buckets)
        x0 = self.denoise(z, routed, buckets)
        return s, z, x0, self.decode(x0, lr)

    def forward(
        self,
        lr: torch.Tensor,
        s: torch.Tensor | None = None,
        buckets: Buckets | None = None,
        adapters: bool = True,
    ) -> torch.Tensor:
        """LR in [0, 1] (N, 3, h, w) -> SR in [0, 1] (N, 3, scale*h, scale*w)."""
        return self.run_stages(lr, s, buckets, adapters)[3]

    def routing(self, s: torch.Tensor, buckets: Buckets | None = None) -> dict[str, Routing]:
        """Routing of every MoR layer for `s` (sets the layers' rank weights as a side effect)."""
        return apply_routing(self.layers(), s, buckets)

    # -- save / load --------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / CONFIG_NAME)
        write_weights_file(folder / WEIGHTS_NAME, self.state_dict(), {"format": "pt", "mor_edge": "1"})

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MoRSR:
        """A model folder, checked before use (`mor_edge.model_folder`): one-line errors for a
        missing or malformed config, damaged or mismatched weights, a pickle, a symlink."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(f"{folder}: no such model folder")
        config = read_config(folder)
        weights = read_weights(folder)
        try:
            with skip_init():
                model = cls(config)
        except (ValueError, TypeError, RuntimeError) as exc:  # diffusers' own config checks
            raise ModelFolderError(f"{folder / CONFIG_NAME}: {str(exc)[:160]}") from None
        check_weights(weights, model.state_dict(), folder / WEIGHTS_NAME)
        model.load_state_dict(weights, strict=True)
        return model.eval()

    @classmethod
    def from_diffusers(
        cls, sd_folder: str | Path, clip_folder: str | Path, config: MoRSRConfig | None = None
    ) -> MoRSR:
        """Build from a local Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/,
        scheduler/) and a local transformers CLIP folder. The prompt embedding is computed
        once from `config.prompt` and stored; the text tower is not kept."""
        from transformers import CLIPTextModel, CLIPTokenizer

        from .degradation import check_tokenizer

        sd = Path(sd_folder)
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (sd / sub).is_dir():
                raise FileNotFoundError(f"{sd} is not a Stable Diffusion folder: {sub}/ is missing")
        config = config or MoRSRConfig(name="sd")
        unet = UNet2DConditionModel.from_pretrained(sd / "unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(sd / "vae", local_files_only=True)
        sched = json.loads((sd / "scheduler" / "scheduler_config.json").read_text())
        estimator = DegradationEstimator.from_clip_folder(clip_folder, config.prompt_pairs)
        text_encoder = CLIPTextModel.from_pretrained(sd / "text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(sd / "tokenizer", local_files_only=True)
        check_tokenizer(tokenizer, text_encoder.config.vocab_size, sd / "tokenizer")
        tokens = tokenizer(
            [config.prompt],
            padding="max_length",
            max_length=min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings),
            truncation=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            prompt = text_encoder(tokens.input_ids).last_hidden_state
        config = dataclasses.replace(
            config,
            vae=_plain(vae.config),
            unet=_plain(unet.config),
            clip_vision=estimator.vision.config.to_dict(),
            estimator_input="rgb",  # a real CLIP tower sees CLIP's colours
            prompt_length=prompt.shape[1],
            beta_start=sched.get("beta_start", config.beta_start),
            beta_end=sched.get("beta_end", config.beta_end),
            beta_schedule=sched.get("beta_schedule", config.beta_schedule),
            num_train_timesteps=sched.get("num_train_timesteps", config.num_train_timesteps),
            prediction_type=sched.get("prediction_type", config.prediction_type),
        )
        config.clip_vision = _vision_kwargs(config.clip_vision)
        with skip_init():
            model = cls(config)
        model.estimator = estimator
        _load_base(model.vae, vae)
        _load_base(model.unet, unet)
        model.prompt_embeds.data.copy_(prompt)
        for layer in model.layers().values():
            layer.reset_adapter()
        return model.eval()


def _plain(config: Any) -> dict[str, Any]:
    """A diffusers FrozenDict config as plain JSON-able constructor kwargs."""
    return {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")
    }


def _vision_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The CLIPVisionConfig fields that matter for rebuilding the tower."""
    keep = (
        "hidden_size",
        "intermediate_size",
        "projection_dim",
        "num_hidden_layers",
        "num_attention_heads",
        "num_channels",
        "image_size",
        "patch_size",
        "hidden_act",
        "layer_norm_eps",
    )
    return {k: config[k] for k in keep if k in config}


def _load_base(target: nn.Module, source: nn.Module) -> None:
    """Load pretrained weights into a model whose layers may be wrapped by MoR (key `x` ->
    `x.base` where wrapped); the adapters keep their own init."""
    wrapped = {n for n, m in target.named_modules() if isinstance(m, MoRLayer)}
    state = {}
    for key, value in source.state_dict().items():
        module, _, leaf = key.rpartition(".")
        state[f"{module}.base.{leaf}" if module in wrapped else key] = value
    missing, unexpected = target.load_state_dict(state, strict=False)
    adapter_keys = ("lora_A", "lora_B", "gate.")
    bad = [k for k in missing if not any(a in k for a in adapter_keys)]
    if bad or unexpected:
        raise RuntimeError(f"weights do not fit the model: missing {bad[:5]}, unexpected {unexpected[:5]}")


def model_fingerprint(model: MoRSR) -> str:
    """sha256 over the config and every tensor of the state dict (names, shapes, bytes)."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
