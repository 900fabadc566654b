"""The `mor-edge` CLI as a user runs it: real files in, real files out, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import mor_edge
from mor_edge.cli import main
from mor_edge.model import MoRSR


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


BUILTIN_HASH = "39183f13b6a9e92ac5016c9e2190daf53a0cce900c51da7e8340c65e12c3ea1c"


def write_photo(path: Path, w: int = 30, h: int = 20, fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def test_info_json_reports_the_builtin_model(tiny_model: MoRSR) -> None:
    code, out = run("info", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["parameters"]["total"] == sum(p.numel() for p in tiny_model.parameters())
    assert report["mor"]["rank"] == 16 and report["mor"]["routed"] == 12
    assert report["mor"]["adapted_layers"]["unet"]["count"] == len(tiny_model.unet_layers())
    assert set(report["macs"]) == {"router", "encoder", "unet", "decoder", "total"}
    assert report["macs"]["decoder"] > report["macs"]["unet"] > report["macs"]["router"] > 0
    assert report["sr_size"] == [256, 256]
    assert report["mor"]["estimator_input"] == tiny_model.config.estimator_input == "highpass"


def test_info_table_and_model_folder(tiny_model: MoRSR, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    code, out = run("info", str(tmp_path / "m"))
    assert code == 0, out
    assert "R=16 S=4 E=12 Z=4 k=4" in out and "MACs per stage" in out
    assert "(scored on the LR image's high-pass part)" in out


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg")])
def test_upscale_writes_a_4x_png(tmp_path: Path, fmt: str, ext: str) -> None:
    src = write_photo(tmp_path / f"in.{ext}", fmt=fmt)
    code, out = run("upscale", str(src), str(tmp_path / "out.png"))
    assert code == 0, out
    with Image.open(tmp_path / "out.png") as img:
        assert img.format == "PNG" and img.size == (120, 80) and img.mode == "RGB"


def test_upscale_matches_the_model(tiny_model: MoRSR, tmp_path: Path) -> None:
    import torch

    from mor_edge.image_io import load_image

    src = write_photo(tmp_path / "in.png", 64, 64)
    assert run("upscale", str(src), str(tmp_path / "out.png"), "--tile", "64")[0] == 0
    with torch.no_grad():
        want = (
            (tiny_model(torch.from_numpy(load_image(src).array()))[0] * 255).round().permute(1, 2, 0).numpy()
        )
    got = np.asarray(Image.open(tmp_path / "out.png"), dtype=np.float32)
    assert np.abs(got - want).max() <= 1.0


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("not an image"), "not an image"),
        (lambda p: p.write_bytes(write_photo(p).read_bytes()[:200]), "unreadable image"),
    ],
)
def test_upscale_bad_input_is_one_line_error(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.png"
    make(src)
    code, out = run("upscale", str(src), str(tmp_path / "out.png"))
    assert code == 1
    assert out.strip().count("\n") == 0 and message in out and "Traceback" not in out
    assert not (tmp_path / "out.png").exists()


def test_upscale_unwritable_output(tmp_path: Path) -> None:
    src = write_photo(tmp_path / "in.png")
    code, out = run("upscale", str(src), str(tmp_path / "missing" / "out.png"))
    assert code == 1 and "does not exist" in out
    code, out = run("upscale", str(src), str(tmp_path / "out.xyz"))
    assert code == 1 and "unsupported output extension" in out


def test_missing_model_folder(tmp_path: Path) -> None:
    code, out = run("info", str(tmp_path))
    assert code == 1 and "config.json is missing" in out


def psnr_against_untiled(model: MoRSR, src: Path, out: Path) -> float:
    """PSNR (dB) of an upscaled image against the reference run on the whole image at once."""
    import torch

    from mor_edge.image_io import load_image

    with torch.no_grad():
        want = model(torch.from_numpy(load_image(src).array())).numpy()
    return float(10 * np.log10(1 / np.mean((load_image(out).array() - want) ** 2)))


def test_upscale_norm_whole(tiny_model: MoRSR, tmp_path: Path) -> None:
    """--norm whole runs the reference tiled on whole-image GroupNorm statistics: closer to the
    untiled output than per-tile statistics (a 72x72 photo in 48-pixel tiles, 16-bit in and out
    so that 8-bit rounding does not hide the difference: 71.5 vs 60.0 dB measured); artifacts
    cannot, and say so in one line."""
    from mor_edge.image_io import save_image
    from mor_edge.photos import photos

    src = tmp_path / "in.png"
    save_image(photos("eval")["motorcycle"][100:388:4, 100:388:4].astype(np.uint16) * 257, src)
    psnr = {}
    for norm in ("whole", "tile"):
        out = tmp_path / f"{norm}.png"
        code, text = run("upscale", str(src), str(out), "--tile", "48", "--overlap", "16", "--norm", norm)
        assert code == 0, text
        psnr[norm] = psnr_against_untiled(tiny_model, src, out)
    assert psnr["whole"] >= 65 and psnr["whole"] > psnr["tile"] + 6, psnr
    refused = tmp_path / "x.png"
    code, text = run("upscale", str(src), str(refused), "--artifact", str(tmp_path), "--norm", "whole")
    assert code == 1
    assert text.strip() == "Error: --norm whole needs the PyTorch reference: artifacts have fixed graphs"
    assert not refused.exists()


def test_builtin_model_golden_output(tmp_path: Path) -> None:
    """`upscale` of a fixed input on the reference (the built-in model; the suite makes the
    reference the default engine), against the stored image; the model's hash is pinned with
    it, so a retrained model must renew the golden."""
    from mor_edge.builtin import load_model
    from mor_edge.model import model_fingerprint

    from .golden import INPUT, assert_golden

    assert model_fingerprint(load_model(None)) == BUILTIN_HASH
    code, text = run("upscale", str(INPUT), str(tmp_path / "sr.png"))
    assert code == 0, text
    assert "engine: PyTorch reference (tiny: " in text
    assert_golden(tmp_path / "sr.png", "builtin_sr.png")


def test_denoise_needs_the_wavelet_colour_step(tmp_path: Path) -> None:
    """A model whose colour step is AdaIN has no band to clean: a one-line refusal."""
    folder = tmp_path / "adain"
    shutil.copytree(Path(mor_edge.__file__).parent / "builtin_model", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "colour_fix": "adain"}))
    image = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(image)
    result = CliRunner().invoke(
        main,
        [
            "upscale",
            str(image),
            str(tmp_path / "o.png"),
            "--model",
            str(folder),
            "--reference",
            "--denoise",
            "0.5",
        ],
    )
    assert result.exit_code == 1 and "denoise needs the wavelet colour step, not 'adain'" in result.output
    assert not (tmp_path / "o.png").exists()
