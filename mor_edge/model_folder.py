"""Reading a model folder (config.json + model.safetensors) without trusting it: both files
regular and inside the folder, the config through its schema, the weights checked against
the model the config builds (names, shapes, dtypes, finite values) before any forward pass.
A pickle is refused under any name: only safetensors are read."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from .atomic import honour_umask
from .config import CONFIG_NAME, WEIGHTS_NAME, MoRSRConfig
from .config_schema import check_config
from .errors import UserError

MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 << 20
PICKLE_MAGICS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")  # pickle 2-5, torch zip


class ModelFolderError(UserError):
    """A model folder that is missing, malformed, or whose weights do not fit its config."""


def _regular(folder: Path, name: str) -> Path:
    path = folder / name
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ModelFolderError(f"{path}: not a regular file (model folders hold plain files)")
    if not path.is_file():
        raise ModelFolderError(f"not a mor-edge model folder: {path} is missing")
    return path


def read_json(path: Path) -> Any:
    """A regular JSON file of at most `MAX_CONFIG_BYTES`; anything else is a one-line error."""
    path = _regular(path.parent, path.name)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelFolderError(f"{path}: {path.stat().st_size} bytes, too large for a config")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({str(exc)[:80]})") from None


def read_config(folder: Path) -> MoRSRConfig:
    path = folder / CONFIG_NAME
    data = read_json(path)
    try:
        return MoRSRConfig.from_dict(check_config(data, str(path)))
    except (ValueError, TypeError) as exc:
        raise ModelFolderError(f"{path}: {exc}") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    return read_weights_file(_regular(folder, WEIGHTS_NAME))


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a pickle or a damaged file is a one-line error."""
    from safetensors.torch import load_file

    with path.open("rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    header = struct.unpack("<Q", head[:8])[0] if len(head) == 9 else 0
    if not (2 <= header <= min(size - 8, MAX_HEADER_BYTES) and head[8:9] == b"{"):
        if head.startswith(PICKLE_MAGICS):
            raise ModelFolderError(f"{path}: a pickle, refused (mor-edge reads safetensors only)")
        raise ModelFolderError(f"{path}: not a safetensors file")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelFolderError(f"{path}: damaged safetensors file ({str(exc)[:120]})") from None


def write_weights_file(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write tensors as safetensors with the mode a plain `open` gives (safetensors' writer
    makes the file private, 0600, which hides a model or checkpoint from the user's group)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    honour_umask(path)


def check_weights(weights: dict[str, torch.Tensor], expected: dict[str, Any], where: Path) -> None:
    """Names, shapes and dtypes as the config's model has them, and every value finite."""
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        parts = [f"{len(missing)} missing (first {missing[0]})"] if missing else []
        parts += [f"{len(extra)} unexpected (first {extra[0]})"] if extra else []
        raise ModelFolderError(f"{where}: weights do not fit the config: {', '.join(parts)}")
    for name, want in expected.items():
        have = weights[name]
        if have.shape != want.shape or have.dtype != want.dtype:
            raise ModelFolderError(
                f"{where}: tensor {name} is {have.dtype} {tuple(have.shape)}, the config needs "
                f"{want.dtype} {tuple(want.shape)}"
            )
        if have.is_floating_point() and not bool(torch.isfinite(have).all()):
            raise ModelFolderError(f"{where}: tensor {name} holds NaN or infinite values")
