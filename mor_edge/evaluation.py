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

from .data import PairSet, degraded_pairs, random_crop
from .degradations import SEVERITIES
from .model import MoRSR
from .photos import evaluation_photos
from .routing import routing_stats
from .teacher import RRDBNet


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


def ciede2000(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean CIEDE2000 colour difference of two (3, H, W) sRGB images in [0, 1]."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    a, b = (rgb2lab(x.double().clamp(0, 1).permute(1, 2, 0).numpy()) for x in (image, reference))
    return float(deltaE_ciede2000(a, b).mean())


def bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def downscale(sr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic reduction by `scale`: SR brought back to the LR grid, to compare
    its colours with the input where there is no HR image."""
    h, w = sr.shape[-2] // scale, sr.shape[-1] // scale
    return F.interpolate(sr, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def niqe_of(images: torch.Tensor, border: int) -> list[float]:
    """NIQE of each (3, H, W) image in [0, 1] (lower: more like a pristine photo)."""
    from .niqe import niqe

    return [niqe(x.double().clamp(0, 1).permute(1, 2, 0).numpy(), border) for x in images]


def quality(
    outputs: dict[str, torch.Tensor], hr: torch.Tensor | None, lr: torch.Tensor, scale: int
) -> dict[str, list[float]]:
    """Per image, for each named output (SR, bicubic, the teacher's): NIQE, the colour
    difference brought back to the LR grid against the LR input, and with HR, PSNR-Y, SSIM-Y
    and CIEDE2000 against it (and NIQE of HR itself); with a teacher, the PSNR-Y of SR and
    bicubic against the teacher's output (how much of its change SR reproduces)."""
    n = lr.shape[0]
    values: dict[str, list[float]] = {}
    for name, out in outputs.items():
        down = downscale(out, scale)
        values[f"niqe_{name}"] = niqe_of(out, scale)
        values[f"ciede_{name}_vs_lr"] = [ciede2000(down[i], lr[i]) for i in range(n)]
        if hr is not None:
            values[f"psnr_{name}"] = [psnr_y(out[i], hr[i], scale) for i in range(n)]
            values[f"ssim_{name}"] = [ssim_y(out[i], hr[i], scale) for i in range(n)]
            values[f"ciede_{name}"] = [ciede2000(out[i], hr[i]) for i in range(n)]
    if hr is not None:
        values["niqe_hr"] = niqe_of(hr, scale)
    if "teacher" in outputs:
        for name in ("sr", "bicubic"):
            values[f"psnr_{name}_vs_teacher"] = [
                psnr_y(outputs[name][i], outputs["teacher"][i], scale) for i in range(n)
            ]
    return values


def _means(values: dict[str, list[float]], rows: list[int] | None = None) -> dict[str, float]:
    return {k: float(np.mean([v[i] for i in rows] if rows is not None else v)) for k, v in values.items()}


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
    teacher: RRDBNet | None = None,
) -> tuple[dict[str, Any], PairSet, dict[str, torch.Tensor]]:
    """Metrics on `count` seeded pairs (severities cycling mild/moderate/severe) cropped from
    `photos` ((H, W, 3) uint8), by default the held-out ones (`evaluation_photos`), for SR,
    bicubic and, if given, the teacher on the same crops. Returns the report, the pairs and
    the outputs by name."""
    model.eval()
    pool = photos if photos is not None else list(evaluation_photos().values())
    pairs = degraded_pairs(model.config.sr_size, count, seed, pool=pool)
    scale = model.config.scale
    srs, scores, active = [], [], []
    for i in range(0, count, batch):
        lr = pairs.lr[i : i + batch]
        s = model.route(lr)
        routings = model.routing(s)
        active.append(routing_stats(routings)["per_image"])
        srs.append(model(lr, s=s))
        scores.append(s)
    outputs = sr_outputs(torch.cat(srs), pairs.lr, scale, teacher)
    s_all = torch.cat(scores).numpy()
    active_all = torch.cat(active).numpy()
    values = quality(outputs, pairs.hr, pairs.lr, scale)
    report: dict[str, Any] = {
        "images": count,
        "seed": seed,
        "denoise": model.config.denoise,
        **_means(values),
    }
    report["by_severity"] = {
        level: _means(values, [i for i, sev in enumerate(pairs.severities) if sev == level])
        for level in SEVERITIES
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
    return report, pairs, outputs


def sr_outputs(
    sr: torch.Tensor, lr: torch.Tensor, scale: int, teacher: RRDBNet | None
) -> dict[str, torch.Tensor]:
    outputs = {"sr": sr, "bicubic": bicubic(lr, scale)}
    if teacher is not None:
        outputs["teacher"] = teacher.upscale(lr)
    return outputs


@torch.no_grad()
def evaluate_lr_only(
    model: MoRSR,
    photos: list[np.ndarray],
    count: int,
    seed: int = 1234,
    batch: int = 6,
    teacher: RRDBNet | None = None,
) -> tuple[dict[str, Any], torch.Tensor, dict[str, torch.Tensor]]:
    """Real LR photos without HR: `count` crops of the model's LR size (round robin over
    `photos`), upscaled by SR, bicubic (and the teacher): NIQE of each, and the colour
    difference of each brought back to the LR grid against the input (mean CIEDE2000).
    Returns the report, the crops and the outputs by name."""
    model.eval()
    rng = np.random.default_rng(seed)
    lr = torch.stack([random_crop(photos[i % len(photos)], model.config.lr_size, rng) for i in range(count)])
    sr = torch.cat([model(lr[i : i + batch]) for i in range(0, count, batch)])
    outputs = sr_outputs(sr, lr, model.config.scale, teacher)
    values = quality(outputs, None, lr, model.config.scale)
    report = {"images": count, "seed": seed, "denoise": model.config.denoise, **_means(values)}
    return report, lr, outputs


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


def save_grid(
    lr: torch.Tensor,
    outputs: dict[str, torch.Tensor],
    scale: int,
    path: Path,
    hr: torch.Tensor | None = None,
    labels: list[str] | None = None,
    rows: int = 6,
) -> None:
    """Rows of LR (nearest-upscaled) / bicubic / SR [/ teacher] [/ HR]; with `labels`
    (severities), the rows take turns over them so that every label shows, else the first
    `rows` images."""
    from PIL import Image, ImageDraw

    picks = list(range(min(rows, lr.shape[0])))
    if labels is not None:
        by_label = [[i for i, lab in enumerate(labels) if lab == level] for level in dict.fromkeys(labels)]
        picks = [i for group in zip(*by_label, strict=False) for i in group][:rows]
    columns = {"bicubic": outputs["bicubic"], "MoR SR": outputs["sr"]}
    if "teacher" in outputs:
        columns["teacher"] = outputs["teacher"]
    if hr is not None:
        columns["HR"] = hr
    titles = ["LR", *columns]
    tiles = []
    for i in picks:
        row = [F.interpolate(lr[i : i + 1], scale_factor=scale, mode="nearest")[0]]
        row += [c[i] for c in columns.values()]
        tiles.append(torch.cat(row, dim=2))
    grid = torch.cat(tiles, dim=1).clamp(0, 1)
    image = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    height, width = outputs["sr"].shape[-2:]
    for col, title in enumerate(titles):
        draw.text((col * width + 4, 4), title, fill=(255, 255, 0))
    for r, i in enumerate(picks):
        if labels is not None:
            draw.text((4, r * height + 16), labels[i], fill=(255, 255, 0))
    image.save(path)
