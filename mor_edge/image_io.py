"""Reading and writing images for upscaling, with one-line errors for bad files.

Inputs: PNG, JPEG, WebP, TIFF, BMP; grayscale, palette, RGB(A), 16-bit; the EXIF orientation
is applied. Colour goes through the model; alpha is kept aside and upscaled without it.
Outputs are written to a temporary file and renamed into place, so a failure never leaves a
partial file; PNG is written in row bands as tiles finish (memory bounded by the band).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import TEMP_PREFIX, honour_umask, remove_stale_temp_files
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
GREY_MODES = ("1", "L", "LA", "La", *SIXTEEN_BIT_MODES)
# Exactly the modes `_split` turns into 8- or 16-bit RGB (+ alpha); others (F: floating point)
# fail in `_open`, before a model is loaded or exported.
INPUT_MODES = (*GREY_MODES, "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGB", "RGBA")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# What Pillow's decoders raise on damaged files (OSError covers truncation and codec errors).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, zlib.error, EOFError, IndexError, TypeError)


@dataclass
class LoadedImage:
    """Colour (H, W, 3) and optional alpha (H, W) as stored (uint8, or uint16 for 16-bit);
    `grey` for greyscale files (their channels are equal here, and the output is grey);
    `frames` of an animated or multi-page file (only the first is read)."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    path: Path
    grey: bool = False
    frames: int = 1

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

    def array(self) -> np.ndarray:
        """The whole image, (1, 3, H, W) float32 in [0, 1]."""
        return self.crop(0, self.height, 0, self.width)


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
            raise UserError(_unidentified(path)) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(f"{path}: over the {MAX_PIXELS:,}-pixel input limit") from None
        except DECODE_ERRORS as exc:
            raise UserError(f"{path}: unreadable image ({exc})") from None
    if image.format not in INPUT_FORMATS:
        raise UserError(f"{path}: {image.format} images are not supported (PNG, JPEG, WebP, TIFF or BMP)")
    if image.mode not in INPUT_MODES:
        raise UserError(f"{path}: image mode {image.mode} is not supported (8- or 16-bit grey or colour)")
    w, h = image.size
    if w * h > MAX_PIXELS:
        raise UserError(f"{path}: {w}x{h} is over the {MAX_PIXELS:,}-pixel input limit")
    if w < 1 or h < 1:
        raise UserError(f"{path}: image has no pixels")
    return image


def _unidentified(path: Path) -> str:
    """Why Pillow could not open `path`: a TIFF it cannot decode is still an image."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic in (b"II*\x00", b"MM\x00*"):
        unsupported = "floating-point ones, and 16-bit grey with alpha, are not supported"
        return f"{path}: a TIFF whose samples cannot be read here ({unsupported})"
    return f"{path}: not an image (PNG, JPEG, WebP, TIFF or BMP expected)"


def probe_image(path: str | Path) -> None:
    """The checks `load_image` makes from the file's header (existence, format, size), without
    decoding it: a bad input fails at once, before a model is loaded or exported."""
    _open(Path(path)).close()


# EXIF orientation -> (quarter turns anticlockwise, then flip left-right), as exif_transpose.
ORIENTATIONS = {
    2: (0, True),
    3: (2, False),
    4: (2, True),
    5: (1, True),
    6: (3, False),
    7: (3, True),
    8: (1, False),
}


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
    elif mode in ("LA", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        array = np.asarray(image)
        return np.ascontiguousarray(array[..., :3]), np.ascontiguousarray(array[..., 3])
    return np.asarray(image), None  # RGB: `_open` let through only the modes handled above


def _sixteen_bit_colour(image: Image.Image, path: Path) -> np.ndarray | None:
    """(H, W, C) uint16 for a 16-bit PNG or TIFF with colour or alpha, which Pillow would
    reduce to 8 bits (grey + alpha, RGB, RGBA); None for every other file."""
    if image.format == "PNG":
        with path.open("rb") as f:
            header = f.read(26)
        if header[24] != 16 or header[25] not in (2, 4, 6):  # IHDR bit depth, colour type
            return None
        import png  # pypng: Pillow has no 16-bit colour mode

        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        planes = int(info["planes"])
        array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
        return array.reshape(height, width, planes)
    tags = getattr(image, "tag_v2", {})
    if image.format == "TIFF" and max(tags.get(258, (8,))) == 16 and tags.get(277, 1) > 1:
        import tifffile

        array = np.asarray(tifffile.imread(path))
        return array if array.ndim == 3 and array.shape[2] in (2, 3, 4) and array.dtype == np.uint16 else None
    return None


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    turns, flip = ORIENTATIONS.get(orientation, (0, False))
    array = np.rot90(array, turns) if turns else array
    return np.ascontiguousarray(array[:, ::-1] if flip else array)


def load_image(path: str | Path) -> LoadedImage:
    """Open, check, orient and split an image file; every failure is a one-line UserError."""
    path = Path(path)
    image = _open(path)
    try:
        with image:
            grey = image.mode in GREY_MODES
            frames = int(getattr(image, "n_frames", 1))
            deep = _sixteen_bit_colour(image, path)
            if deep is not None:
                deep = _orient(deep, image.getexif().get(0x0112, 1))
                colour = 1 if deep.shape[2] < 3 else 3  # grey(+alpha) or RGB(+alpha)
                rgb = np.repeat(deep[..., :1], 3, axis=2) if colour == 1 else deep[..., :3]
                alpha = deep[..., colour] if deep.shape[2] > colour else None
                return LoadedImage(np.ascontiguousarray(rgb), alpha, path, grey=colour == 1, frames=frames)
            ImageOps.exif_transpose(image, in_place=True)  # no second copy of a big image
            # np.asarray decodes the whole file here, inside the error handling
            rgb, alpha = _split(image, path)
    except UserError:
        raise
    except (*DECODE_ERRORS, ImportError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None
    return LoadedImage(rgb=rgb, alpha=alpha, path=path, grey=grey or looks_grey(rgb), frames=frames)


# Lossy formats without a grey mode (WebP, RGB JPEG) store a grey photo with chroma noise of a
# level or two; more than this is colour.
GREY_TOLERANCE = 2


def looks_grey(rgb: np.ndarray) -> bool:
    """A colour file whose channels agree to within `GREY_TOLERANCE` holds a grey photo, and
    comes out grey too."""
    g = rgb[..., 1].astype(np.int16)
    return all(int(np.abs(rgb[..., c].astype(np.int16) - g).max(initial=0)) <= GREY_TOLERANCE for c in (0, 2))


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
    if len(os.fsencode(path.name)) > os.pathconf(path.parent, "PC_NAME_MAX"):
        raise UserError(f"{path.name[:40]}...: file name too long for {path.parent}")
    if path.is_dir():
        raise UserError(f"{path}: is a folder")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{path}: folder {path.parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A temporary file next to `path`, renamed onto it only if the block succeeds (what a
    killed writer leaves is recognisable by name and removed by the next write there)."""
    remove_stale_temp_files(path.parent)
    try:  # a short name: it fits wherever the final name fits
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        honour_umask(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4:
        array = array[0]
    return (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


DEEP_FORMATS = ("PNG", "TIFF")  # output formats that keep 16 bits per channel


def save_image(pixels: np.ndarray, path: str | Path, alpha: np.ndarray | None = None) -> None:
    """Write (H, W, 3) colour or (H, W) grey pixels, uint8 or uint16 (+ alpha of the same
    dtype, where the format keeps it) atomically. 16-bit goes to PNG and TIFF as 16-bit and
    to the other formats reduced to 8."""
    path = check_output_path(path)
    fmt = output_format(path)
    alpha = alpha if fmt in ALPHA_FORMATS else None
    if pixels.dtype == np.uint16 and fmt not in DEEP_FORMATS:
        pixels = (pixels >> 8).astype(np.uint8)
        alpha = None if alpha is None else (alpha >> 8).astype(np.uint8)
    if fmt == "PNG":
        rows = interleave(pixels, alpha)
        writer = PngBandWriter(path, rows.shape[1], rows.shape[0], rows.shape[2], pixels.dtype.itemsize * 8)
        try:
            writer.write(rows)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        return
    if pixels.dtype == np.uint16:  # 16-bit TIFF: Pillow writes no 16-bit colour
        import tifffile

        if pixels.ndim == 2 and alpha is not None:  # grey + alpha: as RGBA, which Pillow reads
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        buffer = io.BytesIO()
        rows = interleave(pixels, alpha)
        tifffile.imwrite(
            buffer,
            rows[..., 0] if rows.shape[2] == 1 else rows,
            photometric="minisblack" if pixels.ndim == 2 else "rgb",
            planarconfig="contig" if rows.shape[2] > 1 else None,
            extrasamples=("unassalpha",) if alpha is not None else None,
        )
        with atomic_output(path) as f:
            f.write(buffer.getbuffer())
        return
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="L" if pixels.ndim == 2 else "RGB")
    if alpha is not None:
        image.putalpha(Image.fromarray(np.ascontiguousarray(alpha), mode="L"))
    with atomic_output(path) as f:
        image.save(f, format=fmt)


def interleave(pixels: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """(h, W, C) rows with alpha as the last channel."""
    rows = pixels[..., None] if pixels.ndim == 2 else pixels
    return rows if alpha is None else np.concatenate([rows, alpha[..., None].astype(rows.dtype)], axis=2)


class PngBandWriter:
    """Streams a PNG (grey, grey + alpha, RGB or RGBA; 8 or 16 bits) row band by row band, so a
    huge output never sits in memory whole. Written to a temporary file and renamed on
    `close()`."""

    COLOUR_TYPES: ClassVar[dict[int, int]] = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type

    def __init__(self, path: Path, width: int, height: int, channels: int, depth: int = 8) -> None:
        if channels not in self.COLOUR_TYPES or depth not in (8, 16):
            raise ValueError(f"PNG of {channels} channels at {depth} bits is not supported")
        self.path, self.width, self.height, self.channels = path, width, height, channels
        self.dtype = np.dtype(">u2") if depth == 16 else np.dtype(np.uint8)
        self._ctx = atomic_output(path)
        self._file = self._ctx.__enter__()
        self._zip = zlib.compressobj(6)
        self._rows = 0
        self._file.write(b"\x89PNG\r\n\x1a\n")
        colour_type = self.COLOUR_TYPES[channels]
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))

    def _chunk(self, kind: bytes, data: bytes) -> None:
        try:
            self._file.write(struct.pack(">I", len(data)) + kind + data)
            self._file.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
        except OSError as exc:  # a full disk or a file-size limit: one line, no partial file
            self.abort()
            raise UserError(f"{self.path}: cannot write ({exc.strerror or exc})") from None

    def write(self, rows: np.ndarray) -> None:
        """(h, W, C) rows of the writer's depth (uint8 or uint16), top to bottom."""
        if rows.shape[1:] != (self.width, self.channels) or rows.dtype.itemsize != self.dtype.itemsize:
            raise ValueError(
                f"expected (h, {self.width}, {self.channels}) rows of {self.dtype.itemsize} bytes, "
                f"got {rows.shape} {rows.dtype}"
            )
        data = np.ascontiguousarray(rows, dtype=self.dtype).reshape(rows.shape[0], -1).view(np.uint8)
        raw = np.concatenate([np.zeros((rows.shape[0], 1), np.uint8), data], axis=1)
        compressed = self._zip.compress(raw.tobytes())
        if compressed:
            self._chunk(b"IDAT", compressed)
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
