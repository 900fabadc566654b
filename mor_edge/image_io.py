"""Reading and writing images for upscaling, with one-line errors for bad files.

Inputs: PNG, JPEG, WebP, TIFF, BMP; grayscale, palette, RGB(A), 16-bit; the EXIF orientation
is applied. Colour goes through the model; alpha is kept aside and upscaled without it.
Outputs are written to a temporary file and renamed into place, so a failure never leaves a
partial file; PNG is written in row bands as tiles finish (memory bounded by the band).
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

INPUT_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP")
OUTPUT_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")
MAX_PIXELS = 50_000_000  # input limit: guards against decompression bombs and absurd sizes
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# What Pillow's decoders raise on damaged files (OSError covers truncation and codec errors).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, zlib.error, EOFError, IndexError, TypeError)


@dataclass
class LoadedImage:
    """Colour (H, W, 3) and optional alpha (H, W) as stored (uint8, or uint16 for 16-bit)."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    path: Path

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def peak(self) -> float:
        return 65535.0 if self.rgb.dtype == np.uint16 else 255.0

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(1, 3, y1-y0, x1-x0) float32 in [0, 1]."""
        tile = self.rgb[y0:y1, x0:x1].astype(np.float32) / self.peak
        return np.ascontiguousarray(tile.transpose(2, 0, 1)[None])

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.crop(0, self.height, 0, self.width))


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except UnidentifiedImageError:
            raise UserError(f"{path}: not an image (PNG, JPEG, WebP, TIFF or BMP expected)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(f"{path}: over the {MAX_PIXELS:,}-pixel input limit") from None
        except DECODE_ERRORS as exc:
            raise UserError(f"{path}: unreadable image ({exc})") from None
    if image.format not in INPUT_FORMATS:
        raise UserError(f"{path}: {image.format} images are not supported (PNG, JPEG, WebP, TIFF or BMP)")
    w, h = image.size
    if w * h > MAX_PIXELS:
        raise UserError(f"{path}: {w}x{h} is over the {MAX_PIXELS:,}-pixel input limit")
    if w < 1 or h < 1:
        raise UserError(f"{path}: image has no pixels")
    return image


def _split(image: Image.Image, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Any supported mode -> (rgb, alpha) arrays, 8- or 16-bit."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        gray = np.asarray(image)
        if gray.dtype != np.uint16:
            if gray.min() < 0 or gray.max() > 65535:
                raise UserError(f"{path}: 32-bit integer pixels are not supported")
            gray = gray.astype(np.uint16)
        return np.repeat(gray[..., None], 3, axis=2), None
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        image = image.convert("RGB")
    elif mode == "LA":
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        array = np.asarray(image)
        return np.ascontiguousarray(array[..., :3]), np.ascontiguousarray(array[..., 3])
    if image.mode != "RGB":
        raise UserError(f"{path}: image mode {mode} is not supported")
    return np.asarray(image), None


def load_image(path: str | Path) -> LoadedImage:
    """Open, check, orient and split an image file; every failure is a one-line UserError."""
    path = Path(path)
    image = _open(path)
    try:
        with image:
            ImageOps.exif_transpose(image, in_place=True)  # no second copy of a big image
            # np.asarray decodes the whole file here, inside the error handling
            rgb, alpha = _split(image, path)
    except UserError:
        raise
    except DECODE_ERRORS as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None
    return LoadedImage(rgb=rgb, alpha=alpha, path=path)


def folder_images(folder: str | Path) -> dict[str, np.ndarray]:
    """RGB uint8 images of a folder (sorted by name); 16-bit images are reduced to 8 bits."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    images = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        loaded = load_image(path)
        rgb = loaded.rgb if loaded.rgb.dtype == np.uint8 else (loaded.rgb >> 8).astype(np.uint8)
        images[path.name] = rgb
    if not images:
        raise UserError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


# -- output -----------------------------------------------------------------------------
def output_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserError(f"{path}: unsupported output extension (use {', '.join(sorted(OUTPUT_FORMATS))})")
    return OUTPUT_FORMATS[suffix]


def check_output_path(path: str | Path) -> Path:
    """Fail before any work is done if `path` cannot become an output image."""
    path = Path(path)
    output_format(path)
    if not path.parent.is_dir():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise UserError(f"{path}: is a folder")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{path}: folder {path.parent} is not writable")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A temporary file next to `path`, renamed onto it only if the block succeeds."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; honour the umask
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    array = image.detach().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 4:
        array = array[0]
    return (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def save_image(rgb: np.ndarray, path: str | Path, alpha: np.ndarray | None = None) -> None:
    """Write (H, W, 3) uint8 (+ (H, W) uint8 alpha where the format keeps it) atomically."""
    path = check_output_path(path)
    fmt = output_format(path)
    image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    if alpha is not None and fmt in ALPHA_FORMATS:
        image.putalpha(Image.fromarray(np.ascontiguousarray(alpha), mode="L"))
    with atomic_output(path) as f:
        image.save(f, format=fmt)


class PngBandWriter:
    """Streams an 8-bit RGB(A) PNG row band by row band, so a huge output never sits in
    memory whole. Written to a temporary file and renamed on `close()`."""

    def __init__(self, path: Path, width: int, height: int, alpha: bool) -> None:
        self.path, self.width, self.height, self.channels = path, width, height, 4 if alpha else 3
        self._ctx = atomic_output(path)
        self._file = self._ctx.__enter__()
        self._zip = zlib.compressobj(6)
        self._rows = 0
        self._file.write(b"\x89PNG\r\n\x1a\n")
        color_type = 6 if alpha else 2
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self._file.write(struct.pack(">I", len(data)) + kind + data)
        self._file.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    def write(self, rows: np.ndarray) -> None:
        """(h, W, C) uint8 rows, top to bottom."""
        if rows.shape[1:] != (self.width, self.channels) or rows.dtype != np.uint8:
            raise ValueError(f"expected (h, {self.width}, {self.channels}) uint8 rows, got {rows.shape}")
        raw = np.concatenate(
            [np.zeros((rows.shape[0], 1), np.uint8), rows.reshape(rows.shape[0], -1)], axis=1
        )
        data = self._zip.compress(raw.tobytes())
        if data:
            self._chunk(b"IDAT", data)
        self._rows += rows.shape[0]

    def close(self) -> None:
        if self._rows != self.height:
            self.abort()
            raise RuntimeError(f"PNG writer got {self._rows} rows, expected {self.height}")
        self._chunk(b"IDAT", self._zip.flush())
        self._chunk(b"IEND", b"")
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the temporary file (after a failure or interrupt)."""
        with contextlib.suppress(Exception):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
