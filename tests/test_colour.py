"""The colour step: its algebra, its finite support under tiling, and the model around it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mor_edge.colour import adain_fix, colour_fix, low_pass, wavelet_fix
from mor_edge.config import MoRSRConfig, support, tiny_config
from mor_edge.image_io import LoadedImage
from mor_edge.model import MoRSR
from mor_edge.resize import bicubic
from mor_edge.tiling import TileInputs, collect, upscale_tiled


def test_low_pass_keeps_flat_images_and_removes_the_finest_detail() -> None:
    flat = torch.full((1, 3, 40, 50), 0.3)
    torch.testing.assert_close(low_pass(flat, 3), flat)
    # it removes the highest frequency: a checkerboard is flat grey after one level (but at
    # the corners, where the replicated border repeats a square)
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None]) % 2
    blurred = low_pass(checker.float()[None, None].expand(1, 3, 64, 64), 1)[..., 1:-1, 1:-1]
    torch.testing.assert_close(blurred, torch.full_like(blurred, 0.5))


def test_wavelet_fix_takes_low_frequencies_from_the_reference_and_details_from_sr() -> None:
    g = torch.Generator().manual_seed(1)
    sr, up = torch.rand(2, 3, 48, 48, generator=g), torch.rand(2, 3, 48, 48, generator=g)
    out = wavelet_fix(sr, up, 2)
    # the StableSR form, high(sr) + low(up), written out
    torch.testing.assert_close(out, (sr - low_pass(sr, 2)) + low_pass(up, 2))
    # a flat SR of any colour becomes the reference's colour exactly
    flat_sr = torch.full((1, 3, 32, 32), 0.9)
    flat_up = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    for method in ("wavelet", "adain"):
        fixed = colour_fix(flat_sr, flat_up, method, 2)
        assert (fixed - flat_up).abs().max() < 1 / 255


def test_adain_matches_the_reference_statistics() -> None:
    g = torch.Generator().manual_seed(2)
    sr, up = torch.rand(1, 3, 30, 30, generator=g), torch.rand(1, 3, 30, 30, generator=g) * 0.2 + 0.4
    out = adain_fix(sr, up)
    torch.testing.assert_close(out.mean(dim=(2, 3)), up.mean(dim=(2, 3)))
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), up.std(dim=(2, 3), unbiased=False))


def test_support_is_what_the_blur_reaches() -> None:
    for levels in (1, 2, 3, 4):
        impulse = torch.zeros(1, 1, 65, 65)
        impulse[..., 32, 32] = 1
        reach = (low_pass(impulse, levels)[0, 0, 32] != 0).nonzero()
        assert int(reach.max()) - 32 == support(levels) == 32 - int(reach.min())


def test_a_grey_input_gets_no_colour_from_the_colour_step() -> None:
    """Grey SR details on a grey reference stay grey: the step mixes no channels."""
    g = torch.Generator().manual_seed(3)
    sr = torch.rand(1, 1, 40, 40, generator=g).expand(1, 3, 40, 40)
    up = torch.rand(1, 1, 40, 40, generator=g).expand(1, 3, 40, 40)
    out = colour_fix(sr, up, "wavelet", 3)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


class ColourStepOnly:
    """A stand-in engine with the model's colour step and nothing learned: nearest-neighbour
    'SR' of a colour-inverted input, aligned to the bicubic of the input. Its output pixel
    depends on input pixels within the step's reach, so tiling must reproduce it exactly."""

    scale, router_size, batch = 4, 8, 1

    def __init__(self, levels: int, keep_margin: bool = True, denoise: float = 0.0) -> None:
        self.config = dataclasses.replace(
            MoRSRConfig(scale=4), colour_levels=levels, residual=False, denoise=denoise
        )
        self.keep_margin = keep_margin

    @property
    def margin(self) -> int:
        return self.config.colour_margin if self.keep_margin else 0

    def route(self, lr: np.ndarray) -> np.ndarray:
        return np.zeros((1, 4), np.float32)

    def run(self, lr: np.ndarray, s: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(lr)
        up = bicubic(x, (x.shape[-2] * 4, x.shape[-1] * 4)).clamp(0, 1)
        sr = F.interpolate(1 - x, scale_factor=4, mode="nearest")
        c = self.config
        return colour_fix(sr, up, "wavelet", c.colour_levels, c.denoise).numpy()

    def passes(self) -> int:
        return 0

    def prepare(self, tiles: TileInputs) -> None:
        pass


@pytest.mark.parametrize("levels,denoise", [(1, 0.0), (2, 0.0), (3, 0.0), (1, 0.5), (2, 1.0)])
@pytest.mark.parametrize("h,w", [(37, 90), (64, 64), (70, 41)])
def test_tiled_equals_untiled_for_the_colour_step(levels: int, denoise: float, h: int, w: int) -> None:
    rgb = np.random.default_rng(levels).integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = LoadedImage(rgb=rgb, alpha=None, path=Path("mem"))
    engine = ColourStepOnly(levels, denoise=denoise)
    whole = engine.run(image.crop(0, h, 0, w), np.zeros((1, 4), np.float32))[0].transpose(1, 2, 0)
    tiled = collect(upscale_tiled(image, engine, tile=24, overlap=8, progress=False))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    # blending from the tile borders on, the tiles' own borders show
    plain = ColourStepOnly(levels, keep_margin=False, denoise=denoise)
    assert np.abs(collect(upscale_tiled(image, plain, 24, 8, progress=False)) - whole).max() > 1e-3


def test_denoise_moves_one_band_from_the_input_to_the_model() -> None:
    """0 is the plain step, 1 the step with one more level, between them a linear blend; a
    flat colour and a grey image stay as they are at any setting."""
    g = torch.Generator().manual_seed(5)
    sr, up = torch.rand(2, 3, 48, 48, generator=g), torch.rand(2, 3, 48, 48, generator=g)
    one, two = wavelet_fix(sr, up, 1), wavelet_fix(sr, up, 2)
    assert torch.equal(wavelet_fix(sr, up, 1, 0.0), one)
    torch.testing.assert_close(wavelet_fix(sr, up, 1, 1.0), two)
    torch.testing.assert_close(wavelet_fix(sr, up, 1, 0.3), one + 0.3 * (two - one))
    assert (one - two).abs().max() > 0.05  # the band is not empty: the blend can fail
    flat_sr = torch.full((1, 3, 32, 32), 0.9)
    flat_up = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    assert (wavelet_fix(flat_sr, flat_up, 1, 0.7) - flat_up).abs().max() < 1 / 255
    grey = wavelet_fix(sr[:, :1].expand(2, 3, 48, 48), up[:, :1].expand(2, 3, 48, 48), 1, 0.7)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_denoise_is_checked_and_widens_the_tile_margin() -> None:
    c = MoRSRConfig(scale=4, colour_levels=1)
    assert dataclasses.replace(c, denoise=0.5).colour_margin == c.colour_margin + support(2) - support(1)
    for bad in ({"denoise": 1.5}, {"denoise": -0.1}, {"denoise": 0.5, "colour_fix": "adain"}):
        with pytest.raises(ValueError, match="denoise"):
            dataclasses.replace(c, **bad)


def test_residual_model_starts_as_aligned_bicubic() -> None:
    """A residual decoder whose output conv is zero gives bicubic; the colour step keeps it."""
    from mor_edge.training import initial_model

    model = initial_model("tiny", 0)
    lr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        sr = model(lr)
    want = bicubic(lr, (256, 256)).clamp(0, 1)
    torch.testing.assert_close(sr, want, atol=1e-5, rtol=0)


def test_decoder_takes_lr_only_when_the_config_needs_it() -> None:
    from mor_edge.stage_contract import stage_specs

    plain = MoRSR(tiny_config(colour_fix="none", residual=False))
    names = [t.name for t in stage_specs(plain.config, "static")["decoder"].inputs]
    assert names == ["x0"]
    coloured = MoRSR(tiny_config())
    assert [t.name for t in stage_specs(coloured.config, "static")["decoder"].inputs] == ["x0", "lr"]
    with pytest.raises(ValueError, match="needs the LR image"):
        coloured.decode(torch.zeros(1, 4, 64, 64))
    with pytest.raises(ValueError, match="colour_fix"):
        tiny_config(colour_fix="magenta")


def test_the_colour_step_runs_in_the_exported_decoder_and_stays_float(tmp_path: Path) -> None:
    """The decoder graph takes lr, computes bicubic and the colour step itself, equals the
    reference on ONNX Runtime, and INT8 never quantizes the step's nodes."""
    import onnx
    import onnxruntime as ort

    from mor_edge.export.int8 import float_only_nodes, quantizable_groups
    from mor_edge.export.onnx_export import OnnxTarget
    from mor_edge.export.stages import StageModule, example_inputs
    from mor_edge.stage_contract import stage_specs

    torch.manual_seed(0)
    model = MoRSR(tiny_config(colour_levels=3)).eval()
    spec = stage_specs(model.config, "static")["decoder"]
    path = tmp_path / "decoder.onnx"
    OnnxTarget().export_stage(StageModule(model, "decoder", "static"), spec, path)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["x0", "lr"]
    colour_nodes = {n.name for n in graph.node if "/colour/" in n.name}
    assert {n.op_type for n in graph.node if n.name in colour_nodes} >= {"Conv", "Pad"}
    assert colour_nodes <= float_only_nodes(graph)
    assert not any("/colour/" in n for names in quantizable_groups(graph).values() for n in names)
    x0, lr = example_inputs(spec, seed=1)
    with torch.no_grad():
        want = model.decode(x0, lr).numpy()
    got = ort.InferenceSession(str(path)).run(None, {"x0": x0.numpy(), "lr": lr.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
