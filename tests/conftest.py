from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mor_edge.builtin import load_model
from mor_edge.model import MoRSR

from .fixtures import save_tiny_clip, save_tiny_sd

# Under pytest-xdist (`make test`: two workers), each worker keeps to one core: the libraries'
# thread pools (torch, ONNX Runtime, OpenVINO) would otherwise spin on both cores in both
# workers, which measured slower than one worker.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER and hasattr(os, "sched_setaffinity"):
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[int(WORKER.removeprefix("gw")) % len(cores)]})
    torch.set_num_threads(1)

# `upscale`'s default engine is the model's cached export (`mor_edge.engine_cache`). Tests
# that do not test that cache run the reference, so their outputs do not depend on which worker
# built the cache first; no test touches the user's own cache folder.
os.environ["MOR_EDGE_ENGINE"] = "reference"


@pytest.fixture(scope="session", autouse=True)
def own_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["MOR_EDGE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


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


# Test files by how long they take alone here, longest first: with two workers taking whole
# files, starting the long ones first keeps one worker from finishing alone at the end.
LONGEST_FIRST = (
    "test_int8_openvino.py",
    "test_tensorrt.py",
    "test_training.py",
    "test_export_onnx.py",
    "test_coreml.py",
    "test_upscale.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order
