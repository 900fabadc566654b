"""What `mor-edge train` runs: steps, batch sizes, learning rates and data per stage.

Its own module (no PyTorch) so that the CLI's `--help` can state the defaults cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """The defaults are the built-in model's recipe (`mor-edge train --preset tiny --seed 1`)."""

    seed: int = 1
    hr_size: int = 96  # HR crop side of the dense-base stage
    batch_size: int = 16
    mor_hr_size: int = 128  # HR side of the region the MoR stage trains on
    mor_batch_size: int = 8
    estimator_pool: int = 8000  # degraded images generated once for the estimator
    estimator_batch_size: int = 64
    dead_leaves: int = 64  # synthetic images added to the estimator's content (512x512 each)
    estimator_steps: int = 4000
    base_steps: int = 1950
    mor_steps: int = 300
    lr: float = 2e-3
    estimator_lr: float = 1e-3
    mor_lr: float = 2e-3
    balance_weight: float = 0.05
    # Levels of the colour step while the SR stages train. Trained with the 2-level step, the
    # model puts its changes into the band the step leaves it; trained without the step, its
    # gains were low-frequency noise removal that the step then undoes (measured, see README).
    colour_levels: int = 2
    log_every: int = 25
    checkpoint_every: int = 250
    images: str | None = None  # folder of images; default: the built-in training photos
    # Distillation: the SR stages' target is teacher_weight * teacher SR + (1 - teacher_weight)
    # * HR (one L2 on the blend equals the weighted sum of the two L2s, up to a constant), on
    # crops of a cached pool of degraded images the teacher upscaled once (`teacher_pool`).
    teacher: str | None = None  # "realesrgan-x4plus" or None (HR targets, crops made per step)
    teacher_weight: float = 1.0
    pool_items: int = 3000  # LR crops of the router's size (64x64 for tiny) in the pool

    def steps(self, stage: str) -> int:
        return int(getattr(self, f"{stage}_steps"))
