"""`mor-edge upscale`: one file or a folder, with the reference model or an artifact, tiled."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .image_io import (
    ALPHA_FORMATS,
    DEEP_FORMATS,
    PngBandWriter,
    check_output_path,
    interleave,
    load_image,
    output_format,
    save_image,
)
from .tiling import TileEngine, TimeBudget, upscale_alpha, upscale_tiled


@dataclass
class TileOptions:
    tile: int
    overlap: int
    per_tile_routing: bool = False
    progress: bool = True
    max_seconds: float | None = None  # refuse an image estimated to take longer (None: no limit)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601: a grey input's grey stays exact


def _quantise(band: np.ndarray, dtype: type[np.integer]) -> np.ndarray:
    """Float band in [0, 1] -> uint8 or uint16, scaling in place (the tiler's buffer is reused)."""
    np.clip(band, 0, 1, out=band)
    band *= np.iinfo(dtype).max
    band += 0.5
    return band.astype(dtype)


def upscale_file(
    src: str | Path, dst: str | Path, engine: TileEngine, options: TileOptions
) -> tuple[str, str]:
    """Upscale one image file to `dst` (format from its extension). A grey input gives a grey
    output (the SR image's luma), a 16-bit one a 16-bit output where the format keeps 16 bits
    (PNG, TIFF). PNG is streamed band by band; other formats are assembled in memory. Returns
    the input and output sizes."""
    dst = check_output_path(dst)
    if Path(src).resolve() == dst.resolve() or (dst.exists() and Path(src).exists() and dst.samefile(src)):
        raise UserError(f"{dst} is the input file: the output would replace it; choose another name")
    image = load_image(src)
    if image.frames > 1:
        print(f"note: {src} has {image.frames} frames; the first is upscaled", file=sys.stderr)
    fmt = output_format(dst)
    dtype = np.uint16 if image.rgb.dtype == np.uint16 and fmt in DEEP_FORMATS else np.uint8
    scale = engine.scale
    out_w, out_h = image.width * scale, image.height * scale
    alpha = None
    if image.alpha is not None and fmt in ALPHA_FORMATS:
        alpha = upscale_alpha(image.alpha, scale, dtype)

    def pixels(band: np.ndarray) -> np.ndarray:
        return _quantise(band @ LUMA if image.grey else band, dtype)

    tiled = upscale_tiled(
        image,
        engine,
        options.tile,
        options.overlap,
        options.per_tile_routing,
        options.progress,
        TimeBudget(options.max_seconds),
    )
    with contextlib.closing(tiled) as bands:  # a failed write ends the progress line first
        if fmt != "PNG":
            save_image(np.concatenate([pixels(band) for band in bands]), dst, alpha)
            return f"{image.width}x{image.height}", f"{out_w}x{out_h}"
        channels = (1 if image.grey else 3) + (alpha is not None)
        writer = PngBandWriter(dst, out_w, out_h, channels, np.dtype(dtype).itemsize * 8)
        try:
            top = 0
            for band in bands:
                rows = pixels(band)
                height = rows.shape[0]
                writer.write(interleave(rows, None if alpha is None else alpha[top : top + height]))
                top += height
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return f"{image.width}x{image.height}", f"{out_w}x{out_h}"


def batch_outputs(src_dir: Path, dst_dir: Path, suffix: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs for every file in `src_dir`, outputs named <stem><suffix>.
    Refused before any work where an output could overwrite an input or another output: an
    output folder that is the input folder or inside it, or two inputs with one output name."""
    if not dst_dir.is_dir():
        raise UserError(f"{dst_dir}: output folder does not exist")
    src, dst = src_dir.resolve(), dst_dir.resolve()
    if dst == src or src in dst.parents:
        raise UserError(
            f"{dst_dir} is the input folder or inside it: its outputs would overwrite or join "
            "the inputs; choose another output folder"
        )
    files = sorted(p for p in src_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(f"{src_dir}: no files to upscale")
    by_output: dict[str, list[str]] = {}
    for p in files:
        by_output.setdefault(f"{p.stem}{suffix}", []).append(p.name)
    clashes = [f"{' and '.join(names)} -> {out}" for out, names in by_output.items() if len(names) > 1]
    if clashes:
        raise UserError(f"inputs would share an output name ({'; '.join(clashes)}); rename them first")
    return [(p, dst_dir / f"{p.stem}{suffix}") for p in files]
