from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mor_edge.builtin import load_model
from mor_edge.model import MoRSR

from .fixtures import save_tiny_clip, save_tiny_sd


@pytest.fixture(scope="session")
def tiny_model() -> MoRSR:
    return load_model(None)


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def lr_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 64, 64, generator=g)
