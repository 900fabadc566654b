"""Tiny Stable Diffusion and CLIP folders in their real on-disk formats, built offline, and a
folder snapshot for tests that check nothing was changed."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from mor_edge.config import MoRConfig, MoRSRConfig

VOCAB_CHARS = string.ascii_lowercase + string.digits + ".,-'!? "


def tiny_tokenizer() -> CLIPTokenizer:
    """A real CLIP BPE tokenizer with a character-level vocabulary (and a few merges)."""
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in VOCAB_CHARS:
        for token in (c, c + "</w>"):
            vocab.setdefault(token, len(vocab))
    merges = [("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges)


def text_config(vocab_size: int, hidden: int = 32, projection: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=64,
        projection_dim=projection,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def save_tiny_clip(folder: Path, vocab_size: int | None = None) -> Path:
    """A tiny CLIPModel + tokenizer saved with save_pretrained. `vocab_size` other than the
    tokenizer's makes a mismatched pair."""
    torch.manual_seed(1)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 32
    config = CLIPConfig(
        text_config=text_config(vocab_size or len(tokenizer)).to_dict(),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_sd(folder: Path) -> Path:
    """unet/, vae/, text_encoder/, tokenizer/, scheduler/ as a diffusers pipeline folder has them."""
    torch.manual_seed(2)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 32
    tokenizer.save_pretrained(folder / "tokenizer")
    CLIPTextModel(text_config(len(tokenizer), hidden=32)).eval().save_pretrained(folder / "text_encoder")
    AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[16, 32],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).save_pretrained(folder / "vae")
    UNet2DConditionModel(
        sample_size=16,
        block_out_channels=[16, 32],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
        use_linear_projection=True,
    ).save_pretrained(folder / "unet")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        folder / "scheduler"
    )
    return folder


def small_mor_config() -> MoRSRConfig:
    """MoR settings for the tiny SD folder (LR 8x8 -> SR 32x32)."""
    return MoRSRConfig(
        name="tiny-sd",
        lr_size=8,
        prompt="a photo",
        mor=MoRConfig(rank=6, shared=2, zero_slots=2, top_k=3, alpha=6.0),
    )


def snapshot(folder: Path) -> dict[str, str]:
    """Every regular file under `folder` (symlinks not followed) with the hash of its content."""
    from mor_edge.export.manifest import sha256_file

    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }
