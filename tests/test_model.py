"""The one-step pipeline against diffusers/transformers, loading from local folders, save/load."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from mor_edge.colour import low_pass
from mor_edge.config import sd21_config, tiny_config
from mor_edge.degradation import DegradationEstimator, TokenizerMismatchError
from mor_edge.model import MoRSR

from .fixtures import save_tiny_clip, small_mor_config


@pytest.fixture(scope="module")
def sd_model(sd_folder: Path, clip_folder: Path) -> MoRSR:
    # A config asking for the high-pass input: a real CLIP tower gets CLIP's colours regardless.
    config = dataclasses.replace(small_mor_config(), estimator_input="highpass")
    return MoRSR.from_diffusers(sd_folder, clip_folder, config)


def test_estimator_scores_are_clip_pair_probabilities(clip_folder: Path) -> None:
    pairs = small_mor_config().prompt_pairs
    est = DegradationEstimator.from_clip_folder(clip_folder, pairs)
    clip = CLIPModel.from_pretrained(clip_folder, local_files_only=True).eval()
    tok = CLIPTokenizer.from_pretrained(clip_folder, local_files_only=True)
    lr = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s = est(lr)
        ids = tok([t for p in pairs for t in p[:2]], padding=True, return_tensors="pt")
        logits = clip(
            input_ids=ids.input_ids, attention_mask=ids.attention_mask, pixel_values=est.preprocess(lr)
        ).logits_per_image  # (N, 2K)
    want = torch.softmax(logits.reshape(3, len(pairs), 2), dim=-1)[..., 1]
    torch.testing.assert_close(s, want, rtol=0, atol=1e-5)
    assert s.shape == (3, len(pairs)) and ((s >= 0) & (s <= 1)).all()
    assert not est.text_embeds.requires_grad


def test_highpass_estimator_sees_detail_not_colour() -> None:
    """The tiny preset's estimator input is the image minus its 3x3 binomial blur: shifting
    an image's colours (brightness, a tint) leaves its scores unchanged, detail changes them;
    an RGB-input estimator (what real CLIP towers get) is moved by colour."""
    from mor_edge.degradation import HIGHPASS_GAIN

    config = tiny_config()
    assert config.estimator_input == "highpass"
    torch.manual_seed(0)
    est = MoRSR(config).estimator.eval()
    g = torch.Generator().manual_seed(5)
    texture = 0.1 * torch.rand(2, 3, 64, 64, generator=g)
    tint = torch.tensor([0.5, 0.2, 0.7]).view(1, 3, 1, 1)
    with torch.no_grad():
        x = est.preprocess(texture + 0.3)
        torch.testing.assert_close(x, HIGHPASS_GAIN * (texture + 0.3 - low_pass(texture + 0.3, 1)))
        torch.testing.assert_close(est(texture + tint), est(texture + 0.3), rtol=0, atol=1e-5)
        assert (est(texture * 3 + 0.3) - est(texture + 0.3)).abs().max() > 1e-3
        assert est.preprocess(torch.full((1, 3, 64, 64), 0.6)).abs().max() < 1e-6
        rgb = MoRSR(dataclasses.replace(config, estimator_input="rgb")).estimator.eval()
        assert (rgb(texture + tint) - rgb(texture + 0.3)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="estimator_input"):
        dataclasses.replace(config, estimator_input="hsv")


def test_from_diffusers_matches_a_plain_diffusers_step(sd_folder: Path, sd_model: MoRSR) -> None:
    """With B = 0 (fresh adapters) the model is exactly OSEDiff's one step on the SD weights,
    with OSEDiff's inference-time wavelet colour alignment."""
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet", local_files_only=True).eval()
    vae = AutoencoderKL.from_pretrained(sd_folder / "vae", local_files_only=True).eval()
    te = CLIPTextModel.from_pretrained(sd_folder / "text_encoder", local_files_only=True).eval()
    tok = CLIPTokenizer.from_pretrained(sd_folder / "tokenizer", local_files_only=True)
    sched = DDPMScheduler.from_pretrained(sd_folder / "scheduler", local_files_only=True)
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        prompt = te(tok(["a photo"], padding="max_length", max_length=32, return_tensors="pt").input_ids)
        up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic").clamp(0, 1) * 2 - 1
        z = vae.encode(up).latent_dist.mode() * vae.config.scaling_factor
        eps = unet(z, 999, encoder_hidden_states=prompt.last_hidden_state.expand(2, -1, -1)).sample
        a = float(sched.alphas_cumprod[999])
        x0 = (z - math.sqrt(1 - a) * eps) / math.sqrt(a)
        image = vae.decode(x0 / vae.config.scaling_factor).sample
        # then the colour step (wavelet, 2 levels by default): high(image) + low(bicubic)
        aligned = image - low_pass(image, 2) + low_pass(up, 2)
        want = ((aligned + 1) / 2).clamp(0, 1)
        got = sd_model(lr)
    assert sd_model.alpha_bar == pytest.approx(a, rel=1e-6)
    torch.testing.assert_close(sd_model.prompt_embeds, prompt.last_hidden_state)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert sd_model.summaries["unet"].adapted and sd_model.summaries["encoder"].adapted
    assert sd_model.config.estimator_input == sd_model.estimator.input_form == "rgb"  # real CLIP


def test_from_diffusers_roundtrips_through_save_pretrained(sd_model: MoRSR, tmp_path: Path) -> None:
    with torch.no_grad():
        for layer in sd_model.layers().values():  # make the adapters matter
            layer.lora_B.normal_(std=0.05)
    sd_model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MoRSR.from_pretrained(tmp_path / "m")
    assert loaded.config == sd_model.config
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded(lr), sd_model(lr))


def test_mismatched_tokenizer_is_refused(tmp_path: Path) -> None:
    folder = save_tiny_clip(tmp_path / "clip", vocab_size=500)
    with pytest.raises(TokenizerMismatchError, match="500"):
        DegradationEstimator.from_clip_folder(folder, small_mor_config().prompt_pairs)


def test_missing_sd_subfolder_is_refused(tmp_path: Path, clip_folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match="unet"):
        MoRSR.from_diffusers(tmp_path, clip_folder, small_mor_config())


def test_tiny_save_load_is_exact(tiny_model: MoRSR, lr_batch: torch.Tensor, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path)
    loaded = MoRSR.from_pretrained(tmp_path)
    with torch.no_grad():
        a, b = tiny_model(lr_batch), loaded(lr_batch)
    assert a.shape == (2, 3, 256, 256)
    assert torch.equal(a, b)
    assert (tmp_path / "model.safetensors").stat().st_size < 20_000_000


def test_tiny_preset_size_and_sd21_architecture() -> None:
    from mor_edge.report import parameter_counts

    with torch.device("meta"):
        tiny, sd21 = MoRSR(tiny_config()), MoRSR(sd21_config())
    assert sum(p.numel() for p in tiny.parameters()) <= 10_000_000
    counts = parameter_counts(sd21)
    assert 860e6 < counts["unet"] < 870e6  # SD 2.1 UNet: 866 M
    assert 83e6 < counts["vae_encoder"] + counts["vae_decoder"] < 84.5e6  # SD 2.1 VAE: 84 M
    assert sd21.config.mor.rank == 40 and sd21.config.mor.top_k == 8
