"""Reading and writing images as [0, 1] float tensors, with one-line errors for bad files and
atomic writes (a temporary file renamed into place, so a failure leaves no partial output)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError

INPUT_FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 64_000_000


def load_image(path: str | Path) -> torch.Tensor:
    """An RGB image file -> (1, 3, H, W) float tensor in [0, 1]."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file")
    try:
        with Image.open(path) as img:
            if img.format not in INPUT_FORMATS:
                raise UserError(f"{path}: {img.format} images are not supported (use PNG or JPEG)")
            if img.width * img.height > MAX_PIXELS:
                raise UserError(f"{path}: {img.width}x{img.height} is over the {MAX_PIXELS:,}-pixel limit")
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image (PNG or JPEG expected)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).unsqueeze(0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> 8-bit RGB image."""
    if image.dim() == 4:
        image = image[0]
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array, mode="RGB")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(path: str | Path) -> Path:
    """Fail before any work is done if `path` cannot become a PNG output."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"{path}: output must be a .png file")
    if not path.parent.is_dir():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise UserError(f"{path}: is a folder")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{path}: folder {path.parent} is not writable")
    return path


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Write a PNG atomically; refuses an output path it cannot write."""
    path = check_output_path(path)
    parent = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            to_pil(image).save(f, format="PNG")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; honour the umask
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
