"""Real-ESRGAN second-order degradation (x4plus settings), seeded, returning what it sampled.

HR (N, 3, H, W) in [0, 1] -> LR (N, 3, H/4, W/4) plus one parameter record per image.
Settings follow Real-ESRGAN's `realesrgan_x4plus` training options (Wang et al., 2021).
A `severity` knob ("mild", "moderate", "severe") draws every continuous parameter from the
lower, middle or upper third of its range (in the degrading direction), so evaluation and
calibration can ask for cases of a known difficulty.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
SEVERITIES = {"mild": (0.0, 1 / 3), "moderate": (1 / 3, 2 / 3), "severe": (2 / 3, 1.0)}
RESIZE_MODES = ("area", "bilinear", "bicubic")
MAX_KERNEL = 21


@dataclass(frozen=True)
class OrderSettings:
    kernel_probs: tuple[float, ...]
    sinc_prob: float
    blur_sigma: tuple[float, float]
    betag: tuple[float, float]
    betap: tuple[float, float]
    resize_probs: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_sigma: tuple[float, float]  # in 0-255 units
    poisson_scale: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[float, float]


@dataclass(frozen=True)
class DegradationSettings:
    first: OrderSettings = OrderSettings(
        kernel_probs=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob=0.1,
        blur_sigma=(0.2, 3.0),
        betag=(0.5, 4.0),
        betap=(1.0, 2.0),
        resize_probs=(0.2, 0.7, 0.1),
        resize_range=(0.15, 1.5),
        gaussian_noise_prob=0.5,
        noise_sigma=(1.0, 30.0),
        poisson_scale=(0.05, 3.0),
        gray_noise_prob=0.4,
        jpeg_range=(30.0, 95.0),
    )
    second: OrderSettings = OrderSettings(
        kernel_probs=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob=0.1,
        blur_sigma=(0.2, 1.5),
        betag=(0.5, 4.0),
        betap=(1.0, 2.0),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        gaussian_noise_prob=0.5,
        noise_sigma=(1.0, 25.0),
        poisson_scale=(0.05, 2.5),
        gray_noise_prob=0.4,
        jpeg_range=(30.0, 95.0),
    )
    second_blur_prob: float = 0.8
    final_sinc_prob: float = 0.8
    scale: int = 4


@dataclass
class Sampler:
    """Seeded draws; `band` restricts continuous draws to a severity third (0..1 scale,
    `increasing` True when larger values degrade more)."""

    rng: np.random.Generator
    band: tuple[float, float] = (0.0, 1.0)

    def uniform(self, lo: float, hi: float, increasing: bool = True) -> float:
        u = self.rng.uniform(*self.band)
        return lo + (hi - lo) * (u if increasing else 1 - u)

    def free_uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def choice(self, options: tuple[Any, ...], probs: tuple[float, ...] | None = None) -> Any:
        return options[self.rng.choice(len(options), p=probs)]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


@dataclass
class DegradationParams:
    """What was sampled for one image; the `*_level` fields are the scalar labels used to
    check that degradation scores track degradations."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    blur_level: float = 0.0  # effective blur sigma in LR pixels (see `finish`)
    noise_level: float = 0.0  # noise std left in the LR image, 0-255 units (see `finish`)
    jpeg_quality: float = 100.0  # the final JPEG's quality: the compression the LR image shows
    resolution_loss: float = 1.0  # how many times below the LR grid the content's resolution fell
    severity: str | None = None

    def finish(self, scale: int) -> None:
        """Derive the effective levels from the sampled parameters. A first-order sigma means
        little on its own: resizes before the final 1/scale shrink or stretch it. In LR pixels
        the two Gaussian blurs combine to sqrt((s1 r1)^2 + s2^2) / (scale r1), and content that
        went through a size below the LR grid (min(r1, r1 r2) < 1/scale) lost resolution by
        that factor, which reads as further blur.

        Noise likewise: each order's noise std is divided by how many times its image is
        shrunk on the way to the LR grid (r1 scale for the first order, r1 r2 scale for the
        second; averaging d x d pixels divides white noise by d), and the first order's also
        by the second-order blur (a Gaussian of sigma s keeps 1 / (2 sqrt(pi) s) of white
        noise). The first JPEG is blurred, resized and noised over by the second order; the
        final one is what the LR image shows."""
        first, second = self.steps[0], self.steps[1]
        r1, r2 = first["resize_scale"], second["resize_scale"]
        s1, s2 = first.get("sigma", 0.0), second.get("sigma", 0.0)
        blur_keep = 1.0 / max(1.0, 2.0 * math.sqrt(math.pi) * s2)
        self.noise_level = math.hypot(
            first["noise_std"] * blur_keep / max(1.0, r1 * scale),
            second["noise_std"] / max(1.0, r1 * r2 * scale),
        )
        self.jpeg_quality = float(self.steps[2]["jpeg_quality"])
        kernel_blur = math.hypot(s1 * r1, s2) / (scale * r1)
        self.resolution_loss = max(1.0, 1.0 / (scale * min(r1, r1 * r2)))
        self.blur_level = math.hypot(kernel_blur, 0.5 * (self.resolution_loss - 1.0))

    def labels(self) -> dict[str, float]:
        """Each degradation kind as a [0, 1] target, keyed like the default prompt pairs."""
        return {
            "blur": min(self.blur_level / 1.5, 1.0),
            "noise": min(self.noise_level / 15.0, 1.0),
            "jpeg": (95.0 - min(self.jpeg_quality, 95.0)) / 65.0,
            "resolution": min((self.resolution_loss - 1.0) / 3.0, 1.0),
        }


# -- kernels ------------------------------------------------------------------------------
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size) - size // 2
    return np.meshgrid(r, r, indexing="xy")


def _sigma_matrix(sx: float, sy: float, theta: float) -> np.ndarray:
    d = np.diag([sx**2, sy**2])
    u = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return u @ d @ u.T


def blur_kernel(kind: str, size: int, sx: float, sy: float, theta: float, beta: float) -> np.ndarray:
    """Gaussian, generalized Gaussian or plateau kernel, normalised to sum 1."""
    xx, yy = _grid(size)
    xy = np.stack([xx, yy], -1).astype(np.float64)
    inv = np.linalg.inv(_sigma_matrix(sx, sy, theta))
    q = np.einsum("...i,ij,...j->...", xy, inv, xy)
    if kind in ("iso", "aniso"):
        k = np.exp(-0.5 * q)
    elif kind.startswith("generalized"):
        k = np.exp(-0.5 * np.power(q, beta))
    else:
        k = 1.0 / (np.power(q, beta) + 1)
    return (k / k.sum()).astype(np.float32)


def sinc_kernel(size: int, omega_c: float) -> np.ndarray:
    """Circular low-pass (2-D sinc, a jinc) kernel: ringing and overshoot artifacts."""
    from scipy.special import j1

    xx, yy = _grid(size)
    r = np.sqrt(xx**2 + yy**2).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * j1(omega_c * r) / (2 * np.pi * r)
    k[size // 2, size // 2] = omega_c**2 / (4 * np.pi)
    return (k / k.sum()).astype(np.float32)


def _pad_kernel(k: np.ndarray) -> np.ndarray:
    pad = (MAX_KERNEL - k.shape[0]) // 2
    return np.pad(k, pad)


def sample_kernel(sp: Sampler, cfg: OrderSettings, record: dict[str, Any]) -> np.ndarray:
    size = int(sp.rng.choice(np.arange(7, MAX_KERNEL + 1, 2)))
    if sp.chance(cfg.sinc_prob):
        omega = sp.free_uniform(math.pi / 3, math.pi) if size < 13 else sp.free_uniform(math.pi / 5, math.pi)
        record.update(kernel="sinc", kernel_size=size, omega_c=omega, sigma=0.0)
        return _pad_kernel(sinc_kernel(size, omega))
    kind = sp.choice(KERNEL_TYPES, cfg.kernel_probs)
    sx = sp.uniform(*cfg.blur_sigma)
    sy = sx if kind.endswith("iso") and not kind.endswith("aniso") else sp.uniform(*cfg.blur_sigma)
    theta = sp.free_uniform(-math.pi, math.pi) if kind.endswith("aniso") else 0.0
    beta = 1.0
    if kind.startswith("generalized"):
        beta = sp.free_uniform(*cfg.betag)
    elif kind.startswith("plateau"):
        beta = sp.free_uniform(*cfg.betap)
    record.update(
        kernel=kind, kernel_size=size, sigma_x=sx, sigma_y=sy, theta=theta, beta=beta, sigma=(sx + sy) / 2
    )
    return _pad_kernel(blur_kernel(kind, size, sx, sy, theta, beta))


def filter2d(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """(1, C, H, W) convolved per channel with a reflect-padded kernel."""
    k = torch.from_numpy(kernel).to(img)[None, None].expand(img.shape[1], 1, *kernel.shape)
    p = kernel.shape[0] // 2
    mode = "reflect" if min(img.shape[-2:]) > p else "replicate"
    return F.conv2d(F.pad(img, (p, p, p, p), mode=mode), k, groups=img.shape[1])


# -- other operators ----------------------------------------------------------------------
def _resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "area":
        return F.interpolate(img, size=size, mode="area")
    return F.interpolate(img, size=size, mode=mode, align_corners=False)


def random_resize(sp: Sampler, img: torch.Tensor, cfg: OrderSettings, record: dict[str, Any]) -> torch.Tensor:
    kind = sp.choice(("up", "down", "keep"), cfg.resize_probs)
    if kind == "up":
        scale = sp.uniform(1.0, cfg.resize_range[1], increasing=False)
    elif kind == "down":
        scale = sp.uniform(cfg.resize_range[0], 1.0, increasing=False)
    else:
        scale = 1.0
    mode = sp.choice(RESIZE_MODES)
    h, w = img.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    record.update(resize=kind, resize_scale=scale, resize_mode=mode)
    return _resize(img, size, mode)


def random_noise(sp: Sampler, img: torch.Tensor, cfg: OrderSettings, record: dict[str, Any]) -> torch.Tensor:
    gray = sp.chance(cfg.gray_noise_prob)
    noise_shape = (1, 1, *img.shape[-2:]) if gray else tuple(img.shape)
    g = torch.Generator().manual_seed(int(sp.rng.integers(2**31)))
    if sp.chance(cfg.gaussian_noise_prob):
        sigma = sp.uniform(*cfg.noise_sigma)
        noise = torch.randn(noise_shape, generator=g) * sigma / 255.0
        record.update(noise="gaussian", noise_sigma=sigma, gray=gray, noise_std=sigma)
    else:
        scale = sp.uniform(*cfg.poisson_scale)
        base = img.mean(dim=1, keepdim=True) if gray else img
        vals = 10 ** math.ceil(math.log10(256))  # Real-ESRGAN's count scale for 8-bit images
        counts = torch.poisson((base.clamp(0, 1) * vals), generator=g)
        noise = (counts / vals - base) * scale
        std = float(noise.std()) * 255.0
        record.update(noise="poisson", poisson_scale=scale, gray=gray, noise_std=std)
    return (img + noise).clamp(0, 1)


def jpeg(img: torch.Tensor, quality: float) -> torch.Tensor:
    array = (img[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=round(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(out.copy()).permute(2, 0, 1)[None].to(img.dtype)


def random_jpeg(sp: Sampler, img: torch.Tensor, cfg: OrderSettings, record: dict[str, Any]) -> torch.Tensor:
    quality = sp.uniform(*cfg.jpeg_range, increasing=False)
    record.update(jpeg_quality=quality)
    return jpeg(img, quality)


# -- the pipeline -------------------------------------------------------------------------
def degrade_one(
    hr: torch.Tensor, sp: Sampler, settings: DegradationSettings
) -> tuple[torch.Tensor, DegradationParams]:
    """One (1, 3, H, W) HR image -> LR (1, 3, H/scale, W/scale) and its parameters."""
    params = DegradationParams()
    h, w = hr.shape[-2:]
    out_size = (h // settings.scale, w // settings.scale)
    img = hr
    for order, cfg in (("first", settings.first), ("second", settings.second)):
        rec: dict[str, Any] = {"order": order}
        if order == "first" or sp.chance(settings.second_blur_prob):
            img = filter2d(img, sample_kernel(sp, cfg, rec))
        img = random_resize(sp, img, cfg, rec)
        img = random_noise(sp, img, cfg, rec)
        if order == "first":
            img = random_jpeg(sp, img, cfg, rec)
        params.steps.append(rec)
    final: dict[str, Any] = {"order": "final", "jpeg_first": sp.chance(0.5)}
    if sp.chance(settings.final_sinc_prob):
        size = int(sp.rng.choice(np.arange(7, MAX_KERNEL + 1, 2)))
        omega = sp.free_uniform(math.pi / 3, math.pi)
        kernel = _pad_kernel(sinc_kernel(size, omega))
        final.update(final_sinc=True, omega_c=omega, kernel_size=size)
    else:
        kernel = np.zeros((MAX_KERNEL, MAX_KERNEL), dtype=np.float32)
        kernel[MAX_KERNEL // 2, MAX_KERNEL // 2] = 1.0
        final.update(final_sinc=False)
    mode = sp.choice(RESIZE_MODES)
    final["resize_mode"] = mode
    quality = sp.uniform(*settings.second.jpeg_range, increasing=False)
    final["jpeg_quality"] = quality
    if final["jpeg_first"]:
        img = filter2d(_resize(jpeg(img, quality), out_size, mode), kernel)
    else:
        img = jpeg(filter2d(_resize(img, out_size, mode), kernel).clamp(0, 1), quality)
    params.steps.append(final)
    params.finish(settings.scale)
    return img.clamp(0, 1), params


def degrade(
    hr: torch.Tensor,
    seed: int,
    severity: str | Sequence[str | None] | None = None,
    settings: DegradationSettings | None = None,
) -> tuple[torch.Tensor, list[DegradationParams]]:
    """HR batch (N, 3, H, W) in [0, 1] -> LR batch and per-image parameters. `severity` is
    one level for the batch or one per image (None: full ranges). The same seed gives the
    same output; image i depends only on (seed, i) and its severity."""
    settings = settings or DegradationSettings()
    levels = [severity] * hr.shape[0] if severity is None or isinstance(severity, str) else list(severity)
    if len(levels) != hr.shape[0] or any(lv is not None and lv not in SEVERITIES for lv in levels):
        raise ValueError(f"severity must be None, one of {list(SEVERITIES)}, or one of those per image")
    outs, params = [], []
    for i, level in enumerate(levels):
        sp = Sampler(np.random.default_rng([seed, i]), SEVERITIES[level] if level else (0.0, 1.0))
        lr, p = degrade_one(hr[i : i + 1].float(), sp, settings)
        p.severity = level
        outs.append(lr)
        params.append(p)
    return torch.cat(outs), params
