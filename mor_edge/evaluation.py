"""Evaluation on held-out photos with seeded degradations: quality, score/degradation
correlation, and how many experts each severity gets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from .data import PairSet, degraded_pairs
from .degradations import SEVERITIES
from .model import MoRSR
from .routing import routing_stats


def y_channel(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) RGB in [0, 1] -> BT.601 luma in [0, 1] (as SR papers compute PSNR/SSIM)."""
    r, g, b = image.double().numpy() * 255.0
    return (16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0) / 255.0


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """PSNR in dB with the reference's value range as peak (1 for images in [0, 1])."""
    peak = float(reference.max() - reference.min()) or 1.0
    mse = float(np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int) -> float:
    a, b = y_channel(sr), y_channel(hr)
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, border: int) -> float:
    a, b = y_channel(sr), y_channel(hr)
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return float(
        structural_similarity(
            a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )


def bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def rank_correlation(scores: np.ndarray, labels: list[float]) -> float | None:
    """Spearman's rho, or None (JSON null) where a side is constant, as a few images can be."""
    if np.ptp(scores) == 0 or np.ptp(labels) == 0:
        return None
    return float(spearmanr(scores, labels).statistic)


@torch.no_grad()
def evaluate(
    model: MoRSR,
    count: int,
    seed: int = 1234,
    batch: int = 6,
    photos: list[np.ndarray] | None = None,
) -> tuple[dict[str, Any], PairSet, torch.Tensor]:
    """Metrics on `count` seeded pairs (severities cycling mild/moderate/severe) cropped from
    `photos` ((H, W, 3) uint8), by default the built-in held-out ones. Returns the report,
    the pairs and the SR images."""
    model.eval()
    pairs = degraded_pairs(model.config.sr_size, count, seed, pool=photos)
    scale = model.config.scale
    srs, scores, active = [], [], []
    for i in range(0, count, batch):
        lr = pairs.lr[i : i + batch]
        s = model.route(lr)
        routings = model.routing(s)
        active.append(routing_stats(routings)["per_image"])
        srs.append(model(lr, s=s))
        scores.append(s)
    sr = torch.cat(srs)
    s_all = torch.cat(scores).numpy()
    active_all = torch.cat(active).numpy()
    up = bicubic(pairs.lr, scale)
    report: dict[str, Any] = {
        "images": count,
        "seed": seed,
        "psnr_sr": float(np.mean([psnr_y(sr[i], pairs.hr[i], scale) for i in range(count)])),
        "psnr_bicubic": float(np.mean([psnr_y(up[i], pairs.hr[i], scale) for i in range(count)])),
        "ssim_sr": float(np.mean([ssim_y(sr[i], pairs.hr[i], scale) for i in range(count)])),
        "ssim_bicubic": float(np.mean([ssim_y(up[i], pairs.hr[i], scale) for i in range(count)])),
    }
    labels = [p.labels() for p in pairs.params]
    report["spearman"] = {
        name: rank_correlation(s_all[:, k], [lab[name] for lab in labels])
        for k, name in enumerate(model.config.degradation_names)
        if name in labels[0]
    }
    report["active_experts_by_severity"] = {
        level: float(
            np.mean([a for a, sev in zip(active_all, pairs.severities, strict=True) if sev == level])
        )
        for level in SEVERITIES
    }
    report["severity_score_by_severity"] = {
        level: float(np.mean([s_all[i].mean() for i, sev in enumerate(pairs.severities) if sev == level]))
        for level in SEVERITIES
    }
    report["active_experts_per_image"] = active_all.tolist()
    report["severity_score_per_image"] = s_all.mean(axis=1).tolist()
    report["severities"] = pairs.severities
    return report, pairs, sr


def plot_active_experts(report: dict[str, Any], path: Path) -> None:
    """Active routed experts against severity: per-image points and per-level means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(SEVERITIES)
    colors = {"mild": "tab:green", "moderate": "tab:orange", "severe": "tab:red"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for level in levels:
        idx = [i for i, s in enumerate(report["severities"]) if s == level]
        ax1.scatter(
            [report["severity_score_per_image"][i] for i in idx],
            [report["active_experts_per_image"][i] for i in idx],
            c=colors[level],
            label=level,
            s=18,
        )
    ax1.set_xlabel("estimated severity (mean degradation score)")
    ax1.set_ylabel("active routed experts (mean over layers)")
    ax1.legend()
    means = [report["active_experts_by_severity"][lv] for lv in levels]
    ax2.bar(levels, means, color=[colors[lv] for lv in levels])
    for x, m in enumerate(means):
        ax2.text(x, m, f"{m:.2f}", ha="center", va="bottom")
    ax2.set_ylabel("mean active routed experts")
    ax2.set_title("sampled degradation severity")
    fig.suptitle("Harder inputs get more experts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_grid(pairs: PairSet, sr: torch.Tensor, scale: int, path: Path, rows: int = 3) -> None:
    """Rows of LR (nearest-upscaled) / bicubic / SR / HR, one row per severity level."""
    from PIL import Image, ImageDraw

    picks = [pairs.severities.index(level) for level in SEVERITIES if level in pairs.severities][:rows]
    tiles = []
    for i in picks:
        lr_big = F.interpolate(pairs.lr[i : i + 1], scale_factor=scale, mode="nearest")[0]
        row = [lr_big, bicubic(pairs.lr[i : i + 1], scale)[0], sr[i], pairs.hr[i]]
        tiles.append(torch.cat(row, dim=2))
    grid = torch.cat(tiles, dim=1).clamp(0, 1)
    image = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    width = pairs.hr.shape[-1]
    for col, title in enumerate(("LR", "bicubic", "MoR SR", "HR")):
        draw.text((col * width + 4, 4), title, fill=(255, 255, 0))
    for r, i in enumerate(picks):
        draw.text((4, r * pairs.hr.shape[-2] + 16), pairs.severities[i], fill=(255, 255, 0))
    image.save(path)
