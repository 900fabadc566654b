"""The built-in model: what every command uses when no model is given.

If trained weights ship in `mor_edge/builtin_model/`, those are loaded; otherwise a seeded
random tiny model is built and labelled as untrained, so nobody mistakes its output for SR.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import tiny_config
from .model import CONFIG_NAME, MoRSR

BUILTIN_DIR = Path(__file__).parent / "builtin_model"
RANDOM_LABEL = "random-init tiny (untrained, seed 0): outputs are not super-resolution"


def builtin_model() -> MoRSR:
    if (BUILTIN_DIR / CONFIG_NAME).is_file():
        return MoRSR.from_pretrained(BUILTIN_DIR)
    torch.manual_seed(0)
    return MoRSR(tiny_config(label=RANDOM_LABEL)).eval()


def load_model(path: str | Path | None = None) -> MoRSR:
    """A model folder (config.json + model.safetensors), or the built-in model for None."""
    if path is None:
        return builtin_model()
    return MoRSR.from_pretrained(path)
