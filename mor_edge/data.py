"""HR crops from photos and seeded LR/HR pairs for evaluation, parity and calibration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .degradations import SEVERITIES, DegradationParams, degrade
from .photos import photos


def random_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A (3, size, size) float crop in [0, 1]; small photos are padded by reflection first."""
    h, w = photo.shape[:2]
    if h < size or w < size:
        photo = np.pad(photo, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")
        h, w = photo.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    crop = photo[y : y + size, x : x + size].astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)


@dataclass
class PairSet:
    lr: torch.Tensor  # (N, 3, h, w)
    hr: torch.Tensor  # (N, 3, H, W)
    params: list[DegradationParams]
    severities: list[str]


def photo_index(i: int, photos: int, severities: int) -> int:
    """The photo of pair `i`: round robin, unless the photo count is a multiple of the severity
    count, where round robin would give each photo a single severity (content and severity
    confounded in every per-severity mean and rank correlation); photos then advance once per
    severity cycle, so each photo meets every severity."""
    return (i // severities if photos % severities == 0 else i) % photos


def degraded_pairs(
    sr_size: int, count: int, seed: int, subset: str = "eval", pool: list[np.ndarray] | None = None
) -> PairSet:
    """`count` HR crops of the subset's photos (or of `pool`, (H, W, 3) uint8 images), round
    robin, with Real-ESRGAN degradations, severities cycling mild, moderate, severe. Fully
    determined by the arguments."""
    rng = np.random.default_rng(seed)
    pool = pool if pool is not None else list(photos(subset).values())
    levels = list(SEVERITIES)
    hr = torch.stack(
        [random_crop(pool[photo_index(i, len(pool), len(levels))], sr_size, rng) for i in range(count)]
    )
    severities = [levels[i % len(levels)] for i in range(count)]
    lr, params = degrade(hr, seed=seed, severity=severities)
    return PairSet(lr, hr, params, severities)
