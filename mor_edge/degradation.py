"""CLIP degradation estimator: LR image -> degradation vector `s` in [0, 1]^K.

Per prompt pair k, ``s_k = exp(c_neg) / (exp(c_pos) + exp(c_neg))`` with c the CLIP logit
(scaled cosine similarity) of the image against the positive and negative prompt. The text
embeddings are computed once and stored in the model, so inference needs only the image tower.

A real CLIP tower sees CLIP's normalised colours. The small tower the built-in model trains
from scratch sees the image's high-pass part instead (`estimator_input: "highpass"`): on held-out
photos its rank correlations with the degradation levels went from about 0.3 to above 0.6
(README), as colours and shading no longer let it rank images by their content.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .colour import low_pass
from .resize import bicubic

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The high-pass input's scale: its values (a few hundredths for fine texture and noise) brought
# near the unit range that the patch embedding is initialised for.
HIGHPASS_GAIN = 8.0


class TokenizerMismatchError(ValueError):
    """The tokenizer in a CLIP folder does not belong to its text model."""


class DegradationEstimator(nn.Module):
    """CLIP image tower + stored prompt-pair text embeddings."""

    logit_scale: torch.Tensor
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        vision_config: dict[str, Any],
        num_pairs: int,
        logit_scale: float = 100.0,
        input_form: str = "rgb",
    ) -> None:
        super().__init__()
        self.input_form = input_form
        config = CLIPVisionConfig(**vision_config)
        self.vision = CLIPVisionModelWithProjection(config)
        self.image_size = config.image_size
        # (K, 2, P): [k, 0] the positive prompt, [k, 1] the negative one, unit norm.
        text = F.normalize(torch.randn(num_pairs, 2, config.projection_dim), dim=-1)
        self.text_embeds = nn.Parameter(text)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    @property
    def num_pairs(self) -> int:
        return self.text_embeds.shape[0]

    def preprocess(self, lr: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size -> the tower's square input: CLIP-normalised colours, or
        the high-pass part (the image minus one 3x3 binomial blur) for `input_form` "highpass"."""
        x = bicubic(lr, (self.image_size, self.image_size)).clamp(0, 1)
        if self.input_form == "highpass":
            return HIGHPASS_GAIN * (x - low_pass(x, 1))
        return (x - self.pixel_mean) / self.pixel_std

    def image_embeds(self, lr: torch.Tensor) -> torch.Tensor:
        out = self.vision(pixel_values=self.preprocess(lr))
        return F.normalize(out.image_embeds, dim=-1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """Degradation vector `s`, shape (N, K); higher means more degraded."""
        img = self.image_embeds(lr)
        text = F.normalize(self.text_embeds, dim=-1)
        logits = self.logit_scale * torch.einsum("np,kcp->nkc", img, text)
        return torch.softmax(logits, dim=-1)[..., 1]

    @staticmethod
    def severity(s: torch.Tensor) -> torch.Tensor:
        """One number per image in [0, 1]: the mean degradation score."""
        return s.mean(dim=-1)

    @classmethod
    def from_clip_folder(
        cls, folder: str | Path, prompt_pairs: Sequence[Sequence[str]]
    ) -> DegradationEstimator:
        """Build from a local transformers CLIP folder (model + tokenizer); zero-shot prompts."""
        from transformers import CLIPModel, CLIPTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no CLIP model in {folder} (config.json missing)")
        clip = CLIPModel.from_pretrained(folder, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        check_tokenizer(tokenizer, clip.config.text_config.vocab_size, folder)
        estimator = cls(
            clip.config.vision_config.to_dict(), len(prompt_pairs), float(clip.logit_scale.detach().exp())
        )
        estimator.vision.vision_model.load_state_dict(clip.vision_model.state_dict())
        estimator.vision.visual_projection.load_state_dict(clip.visual_projection.state_dict())
        with torch.no_grad():
            texts = [t for pair in prompt_pairs for t in pair[:2]]
            max_length = min(tokenizer.model_max_length, clip.config.text_config.max_position_embeddings)
            tokens = tokenizer(
                texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            text = clip.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            if not isinstance(text, torch.Tensor):  # transformers 5 may return a model output
                text = text.pooler_output
            estimator.text_embeds.copy_(F.normalize(text, dim=-1).reshape(len(prompt_pairs), 2, -1))
        estimator.text_embeds.requires_grad_(False)
        return estimator


def check_tokenizer(tokenizer: Any, vocab_size: int, where: Path | str) -> None:
    """Refuse a tokenizer that cannot have produced ids for this text model (e.g. the
    2-token placeholder that an offline hub-id load returns)."""
    got = len(tokenizer)
    if got != vocab_size or got <= 2:
        raise TokenizerMismatchError(
            f"tokenizer in {where} has {got} tokens but the text model expects {vocab_size}"
        )
