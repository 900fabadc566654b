"""NIQE, the no-reference "naturalness" score of Mittal, Soundararajan and Bovik (IEEE SPL
2013): lower is more like a pristine photograph. It needs no HR image, so it scores what one
-step SR adds (sharp, plausible texture) where PSNR against HR rewards blur.

The method as published and as MATLAB's `niqe` computes it: the Y channel (BT.601, 0-255,
rounded), mean-subtracted contrast-normalised coefficients under a 7x7 Gaussian, per 96x96
block the AGGD fits of the coefficients and of their products with four shifted neighbours
(18 features), at full and half resolution (MATLAB's antialiased bicubic `imresize`), then the
Mahalanobis-like distance of the blocks' Gaussian to the pristine one. The pristine model
(`data/niqe_pris_params.npz`: mean, covariance, window) is the file BasicSR 1.4.2 ships in its
source distribution (Apache-2.0), fitted by NIQE's authors on their pristine photo set.
An image needs at least two blocks a side after `border` is cropped: 192 px or more.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.ndimage import convolve
from scipy.special import gamma

BLOCK = 96
PARAMS = Path(__file__).parent / "data" / "niqe_pris_params.npz"
_SHAPES = np.arange(0.2, 10.001, 0.001)  # the AGGD shape grid of the reference implementation
_RATIO = gamma(2 / _SHAPES) ** 2 / (gamma(1 / _SHAPES) * gamma(3 / _SHAPES))


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(PARAMS) as p:
        return p["mu_pris_param"][0], p["cov_pris_param"], p["gaussian_window"]


def aggd(x: np.ndarray) -> tuple[float, float, float]:
    """Shape, left and right scale of an asymmetric generalised Gaussian, by moment matching
    over the shape grid."""
    x = x.ravel()
    left, right = np.sqrt(np.mean(x[x < 0] ** 2)), np.sqrt(np.mean(x[x > 0] ** 2))
    g = left / right
    r = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    r_norm = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = float(_SHAPES[np.argmin((_RATIO - r_norm) ** 2)])
    spread = math.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, float(left * spread), float(right * spread)


def block_features(block: np.ndarray) -> list[float]:
    alpha, bl, br = aggd(block)
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        alpha, bl, br = aggd(block * np.roll(block, shift, axis=(0, 1)))
        mean = (br - bl) * gamma(2 / alpha) / gamma(1 / alpha)
        feats += [alpha, mean, bl, br]
    return feats


def matlab_cubic_weights(size: int, scale: float) -> np.ndarray:
    """(out, in) matrix of MATLAB's antialiased bicubic `imresize` along one axis, its
    symmetric edge handling folded in."""
    out = math.ceil(size * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, out + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    d = (u[:, None] - idx) * (scale if scale < 1 else 1.0)
    a = np.abs(d)
    w = np.where(
        a <= 1, 1.5 * a**3 - 2.5 * a**2 + 1, np.where(a <= 2, -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2, 0)
    )
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(size), np.arange(size)[::-1]])
    src = mirror[(idx.astype(int) - 1) % (2 * size)]
    matrix = np.zeros((out, size))
    np.add.at(matrix, (np.repeat(np.arange(out), taps), src.ravel()), w.ravel())
    return matrix


def luma255(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> BT.601 luma on MATLAB's 16-235 scale, rounded."""
    rgb = rgb.astype(np.float64)
    return np.round(16 + rgb @ np.array([65.481, 128.553, 24.966]))


def niqe(image: np.ndarray, border: int = 0) -> float:
    """NIQE of an (H, W, 3) RGB image in [0, 1] or an (H, W) luma image on 0-255."""
    y = luma255(image) if image.ndim == 3 else np.round(image.astype(np.float64))
    if border:
        y = y[border:-border, border:-border]
    rows, cols = y.shape[0] // BLOCK, y.shape[1] // BLOCK
    if rows < 2 or cols < 2:
        raise ValueError(f"NIQE needs at least {2 * BLOCK}x{2 * BLOCK} pixels, got {y.shape[1]}x{y.shape[0]}")
    y = y[: rows * BLOCK, : cols * BLOCK]
    mu_p, cov_p, window = pristine_model()
    per_scale = []
    for scale in (1, 2):
        mu = convolve(y, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(y * y, window, mode="nearest") - mu * mu))
        mscn = (y - mu) / (sigma + 1)
        b = BLOCK // scale
        per_scale.append(
            [
                block_features(mscn[i * b : (i + 1) * b, j * b : (j + 1) * b])
                for j in range(cols)
                for i in range(rows)
            ]
        )
        if scale == 1:
            y = (
                matlab_cubic_weights(y.shape[0], 0.5)
                @ (y / 255)
                @ matlab_cubic_weights(y.shape[1], 0.5).T
                * 255
            )
    feats = np.concatenate([np.array(f) for f in per_scale], axis=1)
    mu_d = np.nanmean(feats, axis=0)
    cov_d = np.cov(feats[~np.isnan(feats).any(axis=1)], rowvar=False)
    diff = mu_p - mu_d
    return float(np.sqrt(diff @ np.linalg.pinv((cov_p + cov_d) / 2) @ diff))
