"""`mor-edge upscale`: one file or a folder, with the reference model or an artifact, tiled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .image_io import PngBandWriter, check_output_path, load_image, output_format, save_image
from .tiling import TileEngine, upscale_alpha, upscale_tiled


@dataclass
class TileOptions:
    tile: int
    overlap: int
    per_tile_routing: bool = False
    progress: bool = True


def _to_uint8(band: np.ndarray) -> np.ndarray:
    """Float band in [0, 1] -> uint8, scaling in place (the tiler's buffer is reused anyway)."""
    np.clip(band, 0, 1, out=band)
    band *= 255
    band += 0.5
    return band.astype(np.uint8)


def upscale_file(
    src: str | Path, dst: str | Path, engine: TileEngine, options: TileOptions
) -> tuple[str, str]:
    """Upscale one image file to `dst` (format from its extension). PNG is streamed band by
    band; other formats are assembled in memory. Returns the input and output sizes."""
    dst = check_output_path(dst)
    image = load_image(src)
    scale = engine.scale
    out_w, out_h = image.width * scale, image.height * scale
    bands = upscale_tiled(
        image, engine, options.tile, options.overlap, options.per_tile_routing, options.progress
    )
    alpha = upscale_alpha(image.alpha, scale) if image.alpha is not None else None
    if output_format(dst) == "PNG":
        writer = PngBandWriter(dst, out_w, out_h, alpha=alpha is not None)
        try:
            top = 0
            for band in bands:
                rows = _to_uint8(band)
                if alpha is not None:
                    rows = np.concatenate([rows, alpha[top : top + rows.shape[0], :, None]], axis=2)
                writer.write(rows)
                top += rows.shape[0]
            writer.close()
        except BaseException:
            writer.abort()
            raise
    else:
        save_image(np.concatenate([_to_uint8(band) for band in bands]), dst, alpha)
    return f"{image.width}x{image.height}", f"{out_w}x{out_h}"


def batch_outputs(src_dir: Path, dst_dir: Path, suffix: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs for every file in `src_dir`, outputs named <stem><suffix>."""
    if not dst_dir.is_dir():
        raise UserError(f"{dst_dir}: output folder does not exist")
    files = sorted(p for p in src_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(f"{src_dir}: no files to upscale")
    return [(p, dst_dir / f"{p.stem}{suffix}") for p in files]
