"""Batched tiles: artifacts exported with `batch` tiles per call, and the tiler that fills them,
give the image that one tile per call gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mor_edge.calib.sampling import build_calibration_set
from mor_edge.errors import UserError
from mor_edge.export.exporter import export, plan_export
from mor_edge.export.manifest import MANIFEST_NAME, Artifact, ArtifactError
from mor_edge.export.routing_plan import default_buckets
from mor_edge.image_io import LoadedImage
from mor_edge.model import MoRSR
from mor_edge.photos import photos
from mor_edge.reference_engine import ReferenceEngine
from mor_edge.runtimes.base import Runtime
from mor_edge.runtimes.latency import run_bench
from mor_edge.runtimes.parity import run_parity
from mor_edge.runtimes.registry import load_runtime
from mor_edge.tiling import TileEngine, collect, upscale_tiled


def photo(h: int, w: int) -> LoadedImage:
    rgb = np.ascontiguousarray(photos("eval")["motorcycle"][60 : 60 + 3 * h : 3, 40 : 40 + 3 * w : 3])
    return LoadedImage(rgb=rgb, alpha=None, path=Path("mem"))


class Counted:
    """An engine that records how many tiles each call of `run` took."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.calls = engine, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def run(self, lr: np.ndarray, s: np.ndarray) -> np.ndarray:
        self.calls.append(len(lr))
        return self.engine.run(lr, s)  # type: ignore[no-any-return]


def tiled(engine: TileEngine | Counted, image: LoadedImage, tile: int) -> np.ndarray:
    return collect(upscale_tiled(image, engine, tile=tile, overlap=tile // 8, progress=False))  # type: ignore[arg-type]


def test_batched_reference_tiles_give_the_unbatched_image(tiny_model: MoRSR) -> None:
    image = photo(56, 90)  # 2 x 3 tiles of 40: the batch of 4 is filled, then a call of 2
    one = tiled(ReferenceEngine(tiny_model), image, 40)
    engine = Counted(ReferenceEngine(tiny_model, batch=4))
    four = tiled(engine, image, 40)
    assert engine.calls == [4, 2]
    np.testing.assert_allclose(four, one, atol=1e-5)


@pytest.mark.parametrize("routing", ["static", "dynamic"])
def test_batched_artifacts_give_the_unbatched_image(tiny_model: MoRSR, tmp_path: Path, routing: str) -> None:
    buckets = default_buckets(tiny_model, 1) if routing == "static" else None
    runtimes: dict[int, Runtime] = {}
    for batch in (1, 3):
        folder = export(
            tiny_model, tmp_path / f"b{batch}", routing=routing, buckets=buckets, progress=False, batch=batch
        )
        runtimes[batch] = load_runtime(folder, threads=1)
    assert runtimes[3].batch == 3 and Artifact(tmp_path / "b3").summary()["batch"] == 3
    specs = runtimes[3].specs
    assert specs["router"].inputs[0].shape[0] == 1 and specs["decoder"].outputs[0].shape[0] == 3
    image = photo(100, 150)  # 2 x 3 tiles of 64: one call of 3, then of 3
    one = tiled(runtimes[1], image, 64)
    engine = Counted(runtimes[3])
    three = tiled(engine, image, 64)
    assert engine.calls == [3, 3]
    np.testing.assert_allclose(three, one, atol=1e-5)
    # the reference's tile, through the batched graphs (padded with copies) and alone
    lr = image.crop(0, 64, 0, 64)
    s = runtimes[3].route(lr)
    np.testing.assert_allclose(runtimes[3].run(lr, s), runtimes[1].run(lr, s), atol=1e-5)
    with pytest.raises(UserError, match=r"shape \(1 to 3, 3, 64, 64\)"):
        runtimes[3].run(np.repeat(lr, 4, axis=0), s)
    bench = run_bench(runtimes[3], warmup=0, runs=1, progress=False)
    assert bench["tiles_per_call"] == 3 and bench["end_to_end"]["runs"] == 1


def test_int8_calibration_fills_the_batch(tiny_model: MoRSR, tmp_path: Path) -> None:
    """Calibration samples are batch 1; a batched graph gets each as a batch of copies, and
    the INT8 artifact passes its gates."""
    calibration = build_calibration_set(tiny_model, 8, bucket_levels=1, routings=("static",), progress=False)
    folder = export(
        tiny_model,
        tmp_path / "int8",
        precision="int8",
        buckets=default_buckets(tiny_model, 1),
        calibration=calibration,
        progress=False,
        batch=2,
    )
    runtime = load_runtime(folder, threads=1)
    assert runtime.batch == 2
    report = run_parity(runtime, tiny_model, samples=2)
    assert report["passed"], report["failures"]


def test_a_manifest_with_mixed_batches_is_refused(tiny_model: MoRSR, tmp_path: Path) -> None:
    folder = export(tiny_model, tmp_path / "a", routing="base", progress=False, batch=2)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["stages"]["unet"]["outputs"][0]["shape"][0] = 1
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="one batch of tiles"):
        Artifact(folder)


def test_core_ml_takes_one_tile_per_call(tiny_model: MoRSR) -> None:
    with pytest.raises(UserError, match=r"coreml target takes one tile per call \(--batch 1\), not 2"):
        plan_export(tiny_model, "coreml", batch=2, progress=False)
