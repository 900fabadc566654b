"""A calibration set: degraded inputs, the stage inputs the reference made from them, and the
recipe (seed, images, counts, model, buckets) that makes the same set again.

On disk a set is a folder with `recipe.json` and `calibration.safetensors`; it is written
atomically and refused for a model or bucket grid other than the one it was made for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mor_edge.atomic import atomic_folder
from mor_edge.errors import UserError
from mor_edge.model_folder import read_weights_file, write_weights_file
from mor_edge.stage_contract import StageSpec

from .recipe_schema import check_recipe, check_tensors

RECIPE_NAME = "recipe.json"
TENSORS_NAME = "calibration.safetensors"
CALIBRATED_STAGES = ("encoder", "unet", "decoder")  # the router stays in floating point


@dataclass
class CalibrationSet:
    recipe: dict[str, Any]
    lr: torch.Tensor  # (N, 3, h, w) in [0, 1]
    s: torch.Tensor  # (N, K) the reference router's scores
    bucket: torch.Tensor  # (N,) the static bucket each sample calibrates
    natural_bucket: torch.Tensor  # (N,) the bucket its own s falls in
    captured: dict[str, dict[str, torch.Tensor]]  # routing mode -> {"latent", "x0"}: (N, ...)

    def __len__(self) -> int:
        return int(self.lr.shape[0])

    @property
    def routings(self) -> list[str]:
        return sorted(self.captured)

    def check_for(self, model_hash: str, buckets: list[list[float]] | None, routing: str) -> None:
        """Refuse a set made for another model, bucket grid or routing mode."""
        if self.recipe["model_hash"] != model_hash:
            raise UserError(
                "the calibration set was made for another model (hash mismatch); re-run calibrate"
            )
        if routing not in self.captured:
            raise UserError(
                f"the calibration set has no {routing!r} stage inputs (it has {', '.join(self.routings)}); "
                f"re-run calibrate with --routing {routing}"
            )
        made_for = np.asarray(self.recipe["buckets"])
        if (
            routing == "static"
            and buckets is not None
            and not (made_for.shape == np.shape(buckets) and np.allclose(made_for, buckets))
        ):
            raise UserError(
                "the calibration set was made for other static buckets; re-run calibrate with the "
                "same --bucket-levels as the export"
            )

    def stage_inputs(
        self, spec: StageSpec, routing: str, buckets: list[int] | None = None
    ) -> list[dict[str, np.ndarray]]:
        """The inputs of a stage, picked by its contract from lr, s and the captured latent
        and x0; for a static variant only the samples that calibrate its `buckets`. Each
        sample fills the stage's batch with copies of itself (a batch shares one `s`, and
        copies keep the activation ranges of a batch of one)."""
        if spec.name not in CALIBRATED_STAGES:
            raise ValueError(f"no calibration inputs for stage {spec.name!r}")
        rows = [i for i in range(len(self)) if buckets is None or int(self.bucket[i]) in buckets]
        named = spec.feed({"lr": self.lr, "s": self.s, **self.captured[routing]})
        batch = {t.name: t.shape[0] for t in spec.inputs}
        return [
            {k: np.repeat(v[i : i + 1].numpy(), batch[k], axis=0) for k, v in named.items()} for i in rows
        ]

    def save(self, folder: str | Path, force: bool = False) -> Path:
        tensors = {
            "lr": self.lr,
            "s": self.s,
            "bucket": self.bucket,
            "natural_bucket": self.natural_bucket,
        }
        for routing, named in self.captured.items():
            tensors.update({f"{routing}.{k}": v for k, v in named.items()})
        with atomic_folder(folder, force, kind="calibration set") as tmp:
            write_weights_file(tmp / TENSORS_NAME, tensors)
            (tmp / RECIPE_NAME).write_text(json.dumps(self.recipe, indent=2) + "\n")
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> CalibrationSet:
        folder = Path(folder)
        paths = [folder / RECIPE_NAME, folder / TENSORS_NAME]
        if not all(p.is_file() for p in paths):
            raise UserError(f"{folder}: not a calibration set ({RECIPE_NAME} or {TENSORS_NAME} is missing)")
        if any(p.is_symlink() for p in paths) or paths[0].stat().st_size > 1 << 24:
            raise UserError(
                f"{folder}: a calibration set holds plain files (a symlink or an oversized recipe)"
            )
        try:
            recipe = check_recipe(json.loads(paths[0].read_bytes()), str(paths[0]))
            tensors = read_weights_file(paths[1])
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
            raise UserError(f"{folder}: unreadable calibration set ({str(exc)[:120]})") from None
        check_tensors(tensors, recipe, str(paths[1]))
        captured: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if "." in key:
                routing, name = key.split(".", 1)
                captured.setdefault(routing, {})[name] = value
        return cls(
            recipe=recipe,
            lr=tensors["lr"],
            s=tensors["s"],
            bucket=tensors["bucket"],
            natural_bucket=tensors["natural_bucket"],
            captured=captured,
        )
