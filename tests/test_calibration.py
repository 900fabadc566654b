"""Calibration sets: stratified coverage of every bucket, capture, caching, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mor_edge.calib.calibration_set import CalibrationSet
from mor_edge.calib.feeders import coreml_sample_data, nncf_dataset, ort_reader
from mor_edge.calib.sampling import build_calibration_set, coverage, expert_coverage, stratified_choice
from mor_edge.cli import main
from mor_edge.errors import UserError
from mor_edge.model import MoRSR, model_fingerprint
from mor_edge.routing import Buckets
from mor_edge.stage_contract import stage_specs


@pytest.fixture(scope="module")
def calibration(tiny_model: MoRSR) -> CalibrationSet:
    return build_calibration_set(tiny_model, samples=16, bucket_levels=2, progress=False)


def test_stratified_choice_takes_turns() -> None:
    centres = np.array([[0.0], [1.0]])
    s = np.array([[0.1], [0.2], [0.3], [0.9]])
    rows, owners = stratified_choice(s, centres, 4)
    assert owners == [0, 1, 0, 1]
    assert rows == [0, 3, 1, 2]  # bucket 1's second pick is the nearest left: 0.3


def test_every_bucket_is_covered(tiny_model: MoRSR, calibration: CalibrationSet) -> None:
    report = coverage(calibration, tiny_model)
    assert report["buckets_total"] == 16
    assert report["buckets_covered"] == 16
    assert all(row["samples"] == 1 for row in report["buckets"])
    # the built-in model's own scores reach only some buckets (photos are rarely degraded on
    # every axis at once): the others are covered by the pool samples nearest their centres
    reached = [row for row in report["buckets"] if row["pool_natural"] > 0]
    assert len(reached) < 16
    assert any(row["natural"] == 0 and row["samples"] == 1 for row in report["buckets"])
    # routed-expert coverage: one sample selects at most top_k of a layer's E experts; the
    # whole set reaches more of them
    mor = tiny_model.config.mor
    one = expert_coverage(tiny_model, calibration.s[:1])
    assert one["mean"] <= mor.top_k / mor.routed < 1 and one["layers_fully_covered"] == 0
    assert report["experts"]["mean"] > one["mean"] and report["experts"]["layers"] == one["layers"]


def test_captured_inputs_are_the_reference_stage_inputs(
    tiny_model: MoRSR, calibration: CalibrationSet
) -> None:
    buckets = Buckets.grid(2, 4)
    i = 5
    lr = calibration.lr[i : i + 1]
    centre = buckets.centres[calibration.bucket[i : i + 1]]
    with torch.no_grad():
        _, z, x0, _ = tiny_model.run_stages(lr, centre, buckets)
        _, z_dyn, _, _ = tiny_model.run_stages(lr, calibration.s[i : i + 1])
    # captured in batches of 8: float32 sums in another order; x0 is 14.6x the latent
    close = {"rtol": 1e-4, "atol": 1e-3}
    torch.testing.assert_close(calibration.captured["static"]["latent"][i : i + 1], z, **close)
    torch.testing.assert_close(calibration.captured["static"]["x0"][i : i + 1], x0, **close)
    torch.testing.assert_close(calibration.captured["dynamic"]["latent"][i : i + 1], z_dyn, **close)
    dynamic, static = stage_specs(tiny_model.config, "dynamic"), stage_specs(tiny_model.config, "static")
    unet = calibration.stage_inputs(dynamic["unet"], "dynamic")
    assert len(unet) == 16 and set(unet[0]) == {"latent", "s"}
    encoder = calibration.stage_inputs(static["encoder"], "static", buckets=[int(calibration.bucket[i])])
    assert len(encoder) == 1 and set(encoder[0]) == {"lr"}
    np.testing.assert_array_equal(encoder[0]["lr"], lr.numpy())
    # the decoder's colour step takes the LR image beside x0, the sample's own
    decoder = calibration.stage_inputs(static["decoder"], "static", buckets=[int(calibration.bucket[i])])
    assert set(decoder[0]) == {"x0", "lr"}
    np.testing.assert_array_equal(decoder[0]["lr"], lr.numpy())


def test_saved_set_reloads_and_repeats(
    tiny_model: MoRSR, calibration: CalibrationSet, tmp_path: Path
) -> None:
    calibration.save(tmp_path / "cal")
    loaded = CalibrationSet.load(tmp_path / "cal")
    assert loaded.recipe == calibration.recipe
    for name in ("lr", "s", "bucket", "natural_bucket"):
        torch.testing.assert_close(getattr(loaded, name), getattr(calibration, name), rtol=0, atol=0)
    torch.testing.assert_close(loaded.captured["static"]["x0"], calibration.captured["static"]["x0"])
    again = build_calibration_set(tiny_model, samples=16, bucket_levels=2, routings=("base",), progress=False)
    torch.testing.assert_close(again.lr, calibration.lr, rtol=0, atol=0)  # the recipe makes the same set
    with pytest.raises(UserError, match="exists"):
        calibration.save(tmp_path / "cal")


def test_set_refuses_other_models_buckets_and_routings(
    tiny_model: MoRSR, calibration: CalibrationSet
) -> None:
    fingerprint = model_fingerprint(tiny_model)
    calibration.check_for(fingerprint, Buckets.grid(2, 4).to_list(), "static")
    with pytest.raises(UserError, match="another model"):
        calibration.check_for("0" * 64, None, "static")
    with pytest.raises(UserError, match="other static buckets"):
        calibration.check_for(fingerprint, Buckets.grid(1, 4).to_list(), "static")
    with pytest.raises(UserError, match="no 'base' stage inputs"):
        calibration.check_for(fingerprint, None, "base")
    with pytest.raises(UserError, match="cannot cover"):
        build_calibration_set(tiny_model, samples=4, bucket_levels=2, progress=False)


def test_feeders_give_each_quantizer_the_same_samples(tiny_model: MoRSR, calibration: CalibrationSet) -> None:
    samples = calibration.stage_inputs(stage_specs(tiny_model.config, "static")["decoder"], "static")
    reader = ort_reader(samples)
    first = [reader.get_next() for _ in range(len(samples) + 1)]
    assert first[-1] is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["x0"], samples[0]["x0"])
    assert len(list(nncf_dataset(samples).get_inference_data())) == len(samples)
    assert coreml_sample_data(samples)[3]["x0"].dtype == np.float32


def test_calibrate_command(tmp_path: Path) -> None:
    out = tmp_path / "cal"
    result = CliRunner().invoke(
        main, ["calibrate", "--samples", "16", "--routing", "static", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "16 of 16 buckets have samples" in result.output
    assert len(CalibrationSet.load(out)) == 16
    bad = CliRunner().invoke(
        main, ["calibrate", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 1 and "no such folder" in bad.output
    assert not (tmp_path / "x").exists()


def test_calibrate_with_denoise_is_for_the_model_at_that_setting(
    tiny_model: MoRSR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export --denoise 0.5 --calib SET` needs a set made for that model: `calibrate --denoise`."""
    out = tmp_path / "cal"
    args = ["calibrate", "--samples", "2", "--bucket-levels", "1", "--routing", "static", "--denoise", "0.5"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    recorded = CalibrationSet.load(out).recipe["model_hash"]
    plain = model_fingerprint(tiny_model)
    monkeypatch.setattr(tiny_model.config, "denoise", 0.5)  # restored after the test, as the others do
    assert recorded == model_fingerprint(tiny_model) != plain
