"""Golden outputs: stored expected images of the built-in model and of an ONNX artifact for a
fixed input. They catch what parity cannot: a change that the reference and the runtimes share
(image loading, tiling, routing input, the colour step). After an intended change (a retrained
built-in model), rewrite them with `MOR_EDGE_UPDATE_GOLDEN=1 pytest -k golden` and look at
them before committing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

GOLDEN = Path(__file__).parent / "golden"
INPUT = GOLDEN / "input.png"  # 72x56, a crop of skimage's chelsea: the demo's cat, eyes included
# Float sums in another order (another CPU, BLAS or thread count) move a few pixels by a level.
MAX_LEVELS = 2
MEAN_LEVELS = 0.05


def assert_golden(out: Path, name: str) -> None:
    """`out` matches the stored `name` within rounding (or replaces it when updating)."""
    want_path = GOLDEN / name
    if os.environ.get("MOR_EDGE_UPDATE_GOLDEN") == "1":
        shutil.copy(out, want_path)
    got = np.asarray(Image.open(out), dtype=np.int16)
    want = np.asarray(Image.open(want_path), dtype=np.int16)
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = np.abs(got - want)
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (
        f"{out.name} differs from {name}: max {diff.max()} levels, mean {diff.mean():.3f}"
    )
