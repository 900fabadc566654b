"""Tiled upscaling, image formats and modes, and a corpus of malformed inputs."""

from __future__ import annotations

import io
import math
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mor_edge.cli import main
from mor_edge.errors import UserError
from mor_edge.export.manifest import ArtifactError
from mor_edge.global_norm import WholeImageNorm
from mor_edge.image_io import LoadedImage, PngBandWriter, load_image, probe_image
from mor_edge.model import MoRSR
from mor_edge.photos import photos
from mor_edge.reference_engine import ReferenceEngine
from mor_edge.tiling import TileInputs, collect, owned_span, ownership, positions, router_input, upscale_tiled

FAST = ["--tile", "16", "--overlap", "4"]
CANNOT_STORE = {
    ("RGBA", "JPEG"),
    ("RGBA", "BMP"),
    ("LA", "JPEG"),
    ("LA", "BMP"),
    ("LA", "WEBP"),
    ("P", "WEBP"),
    ("P", "JPEG"),
}


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


class Nearest:
    """A stand-in engine whose output is a pure function of each pixel: any seam or
    misplaced tile shows up as a difference from the untiled result."""

    scale, router_size, margin, batch = 4, 8, 0, 1

    def route(self, lr: np.ndarray) -> np.ndarray:
        return np.zeros((1, 4), np.float32)

    def run(self, lr: np.ndarray, s: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(lr, 4, axis=2), 4, axis=3)

    def passes(self) -> int:
        return 0

    def prepare(self, tiles: TileInputs) -> None:
        pass


def image(h: int, w: int, seed: int = 0) -> LoadedImage:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return LoadedImage(rgb=rgb, alpha=None, path=Path("mem"))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("h,w", [(1, 1), (7, 1000), (37, 29), (64, 64), (100, 130)])
def test_tiles_cover_every_pixel_exactly_once_in_weight(h: int, w: int, batch: int) -> None:
    img = image(h, w)
    engine = Nearest()
    engine.batch = batch
    bands = [b.copy() for b in upscale_tiled(img, engine, tile=32, overlap=8, progress=False)]
    out = np.concatenate(bands)
    want = np.repeat(np.repeat(img.rgb.astype(np.float32) / 255, 4, 0), 4, 1)
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, atol=1e-6)
    assert len(bands) == len(positions(h, 32, 8))


class Counting(Nearest):
    def __init__(self, batch: int) -> None:
        self.batch, self.calls = batch, []

    def run(self, lr: np.ndarray, s: np.ndarray) -> np.ndarray:
        self.calls.append(len(lr))
        return super().run(lr, s)


@pytest.mark.parametrize("batch", [1, 4])
def test_tiles_with_the_same_pixels_run_once(batch: int) -> None:
    """A flat area costs one model run: 7x7 tiles, the left 2 columns flat, the rest noise;
    batched, every call is full but the last."""
    img = image(100, 100)
    img.rgb[:, :40] = 77
    engine = Counting(batch)
    out = collect(upscale_tiled(img, engine, tile=16, overlap=2, progress=False))
    xs = positions(100, 16, 2)
    distinct = {img.rgb[y : y + 16, x : x + 16].tobytes() for y in xs for x in xs}
    assert sum(engine.calls) == len(distinct) == 7 * 7 - 2 * 7 + 1
    full, rest = divmod(len(distinct), batch)
    assert engine.calls == [batch] * full + [rest] * (rest > 0)
    want = np.repeat(np.repeat(img.rgb.astype(np.float32) / 255, 4, 0), 4, 1)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_work_estimated_beyond_the_limit_is_refused_early(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(image(64, 96).rgb).save(src)
    code, text = run("upscale", str(src), str(tmp_path / "o.png"), *FAST, "--max-minutes", "0.001")
    assert code == 1 and "this upscale would take about" in text
    assert "(40 tile runs at" in text and "the limit is 0.1 s" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_positions_end_on_the_border() -> None:
    assert positions(10, 32, 8) == [0]
    assert positions(100, 32, 8) == [0, 24, 48, 68]


@pytest.mark.parametrize("whole_image_norm,floor", [(False, 30.0), (True, 45.0)])
def test_tiled_reference_against_untiled(tiny_model: MoRSR, whole_image_norm: bool, floor: float) -> None:
    """Seams, measured: tiled vs untiled output of the reference on a held-out photo. Tiles
    normalised on their own GroupNorm statistics differ from the whole image (measured 34-46
    dB on the built-in model); with whole-image statistics gathered exactly (one GroupNorm
    per pass) only attention and the receptive field at tile borders remain: >= 45 dB."""
    rgb = np.ascontiguousarray(photos("eval")["motorcycle"][100:388:4, 100:388:4])  # 72x72 LR
    img = LoadedImage(rgb=rgb, alpha=None, path=Path("mem"))
    engine = ReferenceEngine(tiny_model, whole_image_norm=whole_image_norm)
    s = engine.route(router_input(img, engine.router_size))
    with torch.no_grad():
        untiled = (
            tiny_model(torch.from_numpy(img.array()), s=torch.from_numpy(s))[0].numpy().transpose(1, 2, 0)
        )
    tiled = collect(upscale_tiled(img, engine, tile=48, overlap=16, progress=False))
    psnr = 10 * math.log10(1 / float(np.mean((tiled - untiled) ** 2)))
    assert psnr >= floor


def save(img: Image.Image, path: Path, fmt: str, **kw: object) -> Path:
    img.save(path, format=fmt, **kw)
    return path


def rgba_image() -> Image.Image:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGBA")


@pytest.mark.parametrize(
    "fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp")]
)
@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "I;16"])
def test_formats_and_modes_round_trip(tmp_path: Path, fmt: str, ext: str, mode: str) -> None:
    base = rgba_image()
    if mode == "I;16":
        if fmt not in ("PNG", "TIFF"):
            pytest.skip(f"{fmt} has no 16-bit grayscale")
        src_img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    elif (mode, fmt) in CANNOT_STORE:
        pytest.skip(f"{fmt} cannot store {mode}")
    else:
        src_img = base.convert(mode) if mode != "P" else base.convert("RGB").convert("P")
    src = save(src_img, tmp_path / f"in.{ext}", fmt)
    for out_ext in ("png", "webp" if mode in ("RGBA", "LA") else "jpg"):
        out = tmp_path / f"out.{out_ext}"
        code, text = run("upscale", str(src), str(out), *FAST)
        assert code == 0, text
        with Image.open(out) as result:
            assert result.size == (44, 36)
            has_alpha = mode in ("RGBA", "LA") and out_ext in ("png", "webp")
            assert result.mode == expected_mode(mode, out_ext, has_alpha)
            if has_alpha and out_ext == "png":
                src_alpha = np.asarray(src_img.getchannel("A"))
                want = np.asarray(Image.fromarray(src_alpha).resize((44, 36), Image.Resampling.BICUBIC))
                assert np.array_equal(np.asarray(result.getchannel("A")), want)


def expected_mode(mode: str, out_ext: str, has_alpha: bool) -> str:
    """Grey in, grey out (16-bit where PNG keeps it); WebP stores colour only."""
    if mode not in ("L", "LA", "I;16") or out_ext == "webp":
        return "RGBA" if has_alpha else "RGB"
    if has_alpha:
        return "LA"
    return "I;16" if mode == "I;16" and out_ext == "png" else "L"


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit colour PNG (Pillow cannot write one)."""
    import png

    h, w, c = pixels.shape
    with path.open("wb") as f:
        png.Writer(w, h, greyscale=False, alpha=c == 4, bitdepth=16).write_array(f, pixels.ravel())
    return path


@pytest.mark.parametrize("out_ext", ["png", "tif", "jpg"])
def test_sixteen_bit_colour_comes_out_sixteen_bit(tmp_path: Path, out_ext: str) -> None:
    pixels = np.random.default_rng(5).integers(0, 65536, (12, 10, 4), dtype=np.uint16)
    src = write_png16(tmp_path / "in.png", pixels)
    loaded = load_image(src)
    assert loaded.rgb.dtype == np.uint16 and np.array_equal(loaded.rgb, pixels[..., :3])
    assert np.array_equal(loaded.alpha, pixels[..., 3])
    out = tmp_path / f"out.{out_ext}"
    code, text = run("upscale", str(src), str(out), *FAST)
    assert code == 0, text
    result = load_image(out)
    assert result.rgb.shape == (48, 40, 3)
    if out_ext == "jpg":
        assert result.rgb.dtype == np.uint8 and result.alpha is None
        return
    assert result.rgb.dtype == np.uint16 and result.alpha is not None and result.alpha.dtype == np.uint16
    assert (result.rgb % 257 != 0).mean() > 0.9  # real 16-bit values, not 8-bit ones widened


def test_grey_photos_come_out_grey(tmp_path: Path) -> None:
    grey = np.asarray(Image.fromarray(photos("eval")["china"]).convert("L"))[100:130, 200:240]
    src = save(Image.fromarray(grey), tmp_path / "in.png", "PNG")
    code, text = run("upscale", str(src), str(tmp_path / "out.png"), *FAST)
    assert code == 0, text
    with Image.open(tmp_path / "out.png") as result:
        assert result.mode == "L" and result.size == (160, 120)
        small = np.asarray(result.resize((40, 30), Image.Resampling.BOX), dtype=np.float64)
    bicubic = Image.fromarray(grey).resize((160, 120), Image.Resampling.BICUBIC)
    bicubic_small = np.asarray(bicubic.resize((40, 30), Image.Resampling.BOX), dtype=np.float64)
    # the SR image's luma keeps the photo's tones about as well as bicubic's round trip
    sr_error, bicubic_error = np.abs(small - grey).mean(), np.abs(bicubic_small - grey).mean()
    assert sr_error < 1.5 * bicubic_error + 3, (sr_error, bicubic_error)


def test_grey_stored_as_lossy_colour_counts_as_grey_and_a_tint_does_not(tmp_path: Path) -> None:
    grey = np.asarray(Image.fromarray(photos("eval")["china"]).convert("L"))[100:160, 200:280]
    src = save(Image.fromarray(grey).convert("RGB"), tmp_path / "grey.jpg", "JPEG", quality=60)
    assert load_image(src).grey  # JPEG's chroma noise of a level or two is not colour
    tinted = np.stack([grey, grey, np.clip(grey.astype(int) + 4, 0, 255).astype(np.uint8)], axis=-1)
    assert not load_image(save(Image.fromarray(tinted), tmp_path / "tint.png", "PNG")).grey


def test_sixteen_bit_input_keeps_its_precision(tmp_path: Path) -> None:
    ramp = np.arange(20 * 20, dtype=np.uint16).reshape(20, 20) * 163
    src = save(Image.fromarray(ramp), tmp_path / "in.png", "PNG")
    loaded = load_image(src)
    assert loaded.rgb.dtype == np.uint16 and loaded.peak == 65535
    np.testing.assert_allclose(loaded.crop(0, 20, 0, 20)[0, 0], ramp / 65535, atol=1e-7)


def test_floating_point_images_are_refused_from_the_header(tmp_path: Path) -> None:
    """Refused by `probe_image`, which runs before a model is loaded or exported."""
    import tifffile

    grey = save(Image.fromarray(np.zeros((8, 8), np.float32)), tmp_path / "grey.tif", "TIFF")
    colour = tmp_path / "colour.tif"
    tifffile.imwrite(colour, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(UserError, match="image mode F is not supported"):
        probe_image(grey)
    with pytest.raises(UserError, match="a TIFF whose samples cannot be read here"):
        probe_image(colour)
    for src in (grey, colour):
        out_dir = tmp_path / f"out_{src.stem}"
        out_dir.mkdir()
        code, output = run("upscale", str(src), str(out_dir / "sr.png"), *FAST)
        assert_clean(code, output, out_dir)
        assert code == 1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src = tmp_path / "in.jpg"
    img.save(src, format="JPEG", exif=exif)
    assert load_image(src).rgb.shape == (20, 10, 3)
    code, out = run("upscale", str(src), str(tmp_path / "out.png"), *FAST)
    assert code == 0, out
    assert Image.open(tmp_path / "out.png").size == (40, 80)


def test_png_band_writer_streams_a_valid_png(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).integers(0, 256, (30, 17, 4), dtype=np.uint8)
    writer = PngBandWriter(tmp_path / "x.png", 17, 30, channels=4)
    for i in range(0, 30, 7):
        writer.write(rows[i : i + 7])
    writer.close()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), rows)
    broken = PngBandWriter(tmp_path / "y.png", 17, 30, channels=4)
    broken.write(rows[:5])
    with pytest.raises(RuntimeError):
        broken.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


# -- malformed inputs ---------------------------------------------------------------------
def _png_bytes() -> bytes:
    buf = io.BytesIO()
    rgba_image().save(buf, format="PNG")
    return buf.getvalue()


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    rgba_image().convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


def _bomb_png(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def hand_made_corpus() -> dict[str, bytes]:
    corpus: dict[str, bytes] = {
        "empty": b"",
        "text": b"hello, not an image\n",
        "zeros": bytes(1000),
        "png_magic_only": b"\x89PNG\r\n\x1a\n",
        "bomb_100k": _bomb_png(100_000, 100_000),
        "bomb_wide": _bomb_png(1_000_000, 60),
        "zero_width": _bomb_png(0, 10),
        "gif": b"GIF89a" + bytes(20),
        "pdf": b"%PDF-1.4\n%EOF",
        "html": b"<html><body>hi</body></html>",
    }
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "BMP"):
        data = _encoded(fmt)
        for frac in (0.1, 0.3, 0.5, 0.8, 0.95):
            corpus[f"{fmt.lower()}_cut_{frac}"] = data[: int(len(data) * frac)]
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        corpus[f"{fmt.lower()}_flipped"] = bytes(flipped)
    return corpus


def assert_clean(code: int, output: str, out_dir: Path) -> None:
    assert "Traceback" not in output
    assert code in (0, 1)
    if code == 1:
        assert output.strip().startswith("Error: ") and output.strip().count("\n") == 0
        assert not any(out_dir.iterdir()), list(out_dir.iterdir())
    leftovers = [p.name for p in out_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_hand_made_corpus_gives_clean_errors(tmp_path: Path) -> None:
    corpus = hand_made_corpus()
    assert len(corpus) >= 40
    for name, data in corpus.items():
        src = tmp_path / f"{name}.png"
        src.write_bytes(data)
        out_dir = tmp_path / f"out_{name}"
        out_dir.mkdir()
        code, output = run("upscale", str(src), str(out_dir / "sr.png"), *FAST)
        assert_clean(code, output, out_dir)
        if name.startswith(("empty", "text", "bomb", "gif", "pdf", "html", "zero")):
            assert code == 1, name


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF", b"II*\x00", b"BM", b""]),
    body=st.binary(max_size=300),
)
def test_generated_garbage_gives_clean_errors(tmp_path: Path, prefix: bytes, body: bytes) -> None:
    case = tmp_path / f"case{abs(hash((prefix, body)))}"
    case.mkdir()
    (case / "in.png").write_bytes(prefix + body)
    out_dir = case / "out"
    out_dir.mkdir()
    assert_clean(*run("upscale", str(case / "in.png"), str(out_dir / "sr.png"), *FAST), out_dir)


def test_folder_mode_reports_failures_and_goes_on(tmp_path: Path) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    save(rgba_image().convert("RGB"), src / "a.png", "PNG")
    (src / "b.jpg").write_bytes(b"garbage")
    save(rgba_image(), src / "c.webp", "WEBP")
    result = CliRunner().invoke(main, ["upscale", str(src), str(dst), *FAST])
    assert result.exit_code == 1
    assert "b.jpg" in result.output and "1 of the files" in result.output
    assert sorted(p.name for p in dst.iterdir()) == ["a.png", "c.png"]


def test_artifact_for_a_missing_runtime_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mor_edge.runtimes.registry import load_runtime

    from .toy_artifact import write_toy_artifact

    folder = write_toy_artifact(tmp_path / "art")
    monkeypatch.setitem(sys.modules, "mor_edge.runtimes.ort_runtime", None)
    with pytest.raises(ArtifactError, match=r"onnxruntime is not installed \(pip install 'mor-edge\[onnx\]'"):
        load_runtime(folder)


def test_whole_image_norm_gathers_each_pixel_once() -> None:
    """A 1x1 conv + GroupNorm is pointwise except for the GroupNorm's statistics: with
    statistics gathered over tiles that own every pixel once, tiles normalise exactly like
    the whole image (plain per-tile normalisation does not)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.GroupNorm(2, 8), torch.nn.Conv2d(8, 3, 1))
    x = torch.rand(1, 3, 37, 50) * torch.linspace(0, 2, 50)  # statistics vary across the image
    tile, overlap = 24, 8
    ys, xs = positions(37, tile, overlap), positions(50, tile, overlap)
    norm = WholeImageNorm(net)

    def tiles():  # type: ignore[no-untyped-def]
        for iy, y in enumerate(ys):
            for ix, x0 in enumerate(xs):
                crop = x[..., y : y + tile, x0 : x0 + tile]
                yield torch.from_numpy(ownership(ys, xs, iy, ix, tile, 37, 50)), lambda c=crop: net(c)

    with torch.no_grad():
        whole = net(x)
        norm.gather(tiles, norm.execution_order(lambda: net(x)))
        for y in ys:
            for x0 in xs:
                crop = x[..., y : y + tile, x0 : x0 + tile]
                region = whole[..., y : y + tile, x0 : x0 + tile]
                with norm.active():
                    fixed = net(crop)
                torch.testing.assert_close(fixed, region, atol=1e-5, rtol=1e-5)
                assert (net(crop) - region).abs().max() > 1e-2


def test_owned_spans_cover_once() -> None:
    for length, tile, overlap in [(100, 32, 8), (37, 24, 8), (20, 32, 8), (64, 64, 16)]:
        starts = positions(length, tile, overlap)
        covered = np.zeros(length, int)
        for i, start in enumerate(starts):
            lo, hi = owned_span(starts, i, tile, length)
            assert 0 <= lo < hi <= tile
            covered[start + lo : start + hi] += 1
        assert (covered == 1).all()
