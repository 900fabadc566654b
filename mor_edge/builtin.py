"""The built-in model: what every command uses when no model is given.

If trained weights ship in `mor_edge/builtin_model/`, those are loaded; otherwise a seeded
random tiny model is built and labelled as untrained, so nobody mistakes its output for SR.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import CONFIG_NAME, MoRSRConfig, tiny_config
from .model import MoRSR

BUILTIN_DIR = Path(__file__).parent / "builtin_model"
RANDOM_LABEL = "random-init tiny (untrained, seed 0): outputs are not super-resolution"


def random_model(config: MoRSRConfig | None = None, seed: int = 0) -> MoRSR:
    """A seeded random model (tiny by default) whose adapters and routing are live: B is
    drawn instead of zero (else every adapter is a no-op) and the CLIP logit scale is lowered
    so that random text embeddings give spread-out scores instead of saturated 0/1."""
    torch.manual_seed(seed)
    model = MoRSR(config or tiny_config(label=RANDOM_LABEL))
    with torch.no_grad():
        for layer in model.layers().values():
            torch.nn.init.normal_(layer.lora_B, std=0.02)
        model.estimator.logit_scale.fill_(10.0)
    return model.eval()


def builtin_model() -> MoRSR:
    if (BUILTIN_DIR / CONFIG_NAME).is_file():
        return MoRSR.from_pretrained(BUILTIN_DIR)
    return random_model()


def load_model(path: str | Path | None = None) -> MoRSR:
    """A model folder (config.json + model.safetensors), or the built-in model for None."""
    if path is None:
        return builtin_model()
    return MoRSR.from_pretrained(path)
