"""Degradation synthesis, training stages, resume, and `mor-edge evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import spearmanr

from mor_edge import training
from mor_edge.cli import main
from mor_edge.data import degraded_pairs, photo_index
from mor_edge.dead_leaves import colour_palette, dead_leaves_images
from mor_edge.degradations import DegradationSettings, degrade
from mor_edge.model import MoRSR
from mor_edge.train_config import TrainConfig
from mor_edge.training import StageLoss, Trainer, TrainingData, initial_model

SMALL = dict(
    seed=0,
    hr_size=32,
    batch_size=2,
    mor_hr_size=32,
    mor_batch_size=2,
    estimator_pool=8,
    estimator_batch_size=4,
    dead_leaves=2,
    log_every=1,
    checkpoint_every=5,
)


def small_data(config: TrainConfig, model: MoRSR) -> TrainingData:
    return TrainingData(
        config, model.config.degradation_names, model.estimator.image_size, model.config.scale
    )


def hr_batch(n: int = 6, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_degradation_is_reproducible_by_seed() -> None:
    a, pa = degrade(hr_batch(), seed=7)
    b, pb = degrade(hr_batch(), seed=7)
    c, _ = degrade(hr_batch(), seed=8)
    assert a.shape == (6, 3, 16, 16)
    assert torch.equal(a, b) and [p.steps for p in pa] == [p.steps for p in pb]
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_sampled_parameters_fall_in_the_configured_ranges() -> None:
    cfg = DegradationSettings()
    _, params = degrade(hr_batch(40, 32), seed=3)
    kinds = set()
    for p in params:
        first, second, final = p.steps
        for step, order in ((first, cfg.first), (second, cfg.second)):
            kinds.add(step.get("kernel"))
            if "kernel_size" in step:
                assert 7 <= step["kernel_size"] <= 21 and step["kernel_size"] % 2 == 1
            if step.get("kernel") not in (None, "sinc"):
                assert order.blur_sigma[0] <= step["sigma_x"] <= order.blur_sigma[1]
            assert order.resize_range[0] <= step["resize_scale"] <= order.resize_range[1]
            if step["noise"] == "gaussian":
                assert order.noise_sigma[0] <= step["noise_sigma"] <= order.noise_sigma[1]
            else:
                assert order.poisson_scale[0] <= step["poisson_scale"] <= order.poisson_scale[1]
        assert 30 <= first["jpeg_quality"] <= 95 and 30 <= final["jpeg_quality"] <= 95
        assert all(0 <= v <= 1 for v in p.labels().values())
    assert {"iso", "aniso"} <= kinds


@pytest.mark.parametrize("photos", [1, 2, 3, 6, 8, 9])
def test_every_photo_meets_every_severity(photos: int) -> None:
    """Pairs cycle severities with period 3; with 3, 6 or 9 photos plain round robin would
    give each photo one severity, confounding content with severity in evaluate's figures."""
    seen = {(photo_index(i, photos, 3), i % 3) for i in range(3 * photos)}
    assert seen == {(p, s) for p in range(photos) for s in range(3)}
    if photos % 3:  # the counts the default pools have keep plain round robin (figures unchanged)
        order = [photo_index(i, photos, 3) for i in range(2 * photos)]
        assert order == [i % photos for i in range(2 * photos)]


def test_severity_bands_order_the_degradations() -> None:
    means = {}
    for level in ("mild", "moderate", "severe"):
        _, params = degrade(hr_batch(24, 32), seed=5, severity=level)
        means[level] = (np.mean([p.blur_level for p in params]), np.mean([p.jpeg_quality for p in params]))
    assert means["mild"][0] < means["moderate"][0] < means["severe"][0]
    assert means["mild"][1] > means["moderate"][1] > means["severe"][1]
    with pytest.raises(ValueError):
        degrade(hr_batch(1), seed=0, severity="extreme")


def _params(model: MoRSR) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize(
    "stage,prefixes",
    [("estimator", ("estimator.",)), ("base", ("vae.", "unet.")), ("mor", ("lora_A", "lora_B", "gate."))],
)
def test_a_few_steps_reduce_the_loss_and_touch_only_trainable_parameters(
    stage: str, prefixes: tuple[str, ...], tmp_path: Path
) -> None:
    model = initial_model("tiny", seed=0)
    if stage == "mor":  # adapters on top of a trained base: B non-zero so gradients reach A too,
        with torch.no_grad():  # and a residual decoder no longer zero at its output
            for layer in model.layers().values():
                layer.lora_B.normal_(std=0.01)
            model.vae.decoder.conv_out.weight.normal_(std=0.01)
    steps = {"estimator_steps": 0, "base_steps": 0, "mor_steps": 0, f"{stage}_steps": 12}
    config = TrainConfig(**SMALL, **steps)
    data = small_data(config, model)
    # The batches the run trains on (batch i of a stage is fixed by the seed): 12 warm-up steps
    # are too few for a loss on unseen crops to fall reliably (measured: by 2e-7 of 7e-3).
    fixed = [data.batch(stage, i) for i in range(12)]

    def loss() -> float:
        with torch.no_grad():
            return float(
                np.mean(
                    [float(StageLoss(model, stage, 0.0)(b.lr, b.hr, b.labels, b.router_lr)[0]) for b in fixed]
                )
            )

    before_loss, before = loss(), _params(model)
    Trainer(model, config, tmp_path, progress=False).run()
    after_loss, after = loss(), _params(model)
    assert after_loss < before_loss
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed
    for name in changed:
        if stage == "mor":
            assert any(p in name for p in prefixes), name
        else:
            assert name.startswith(prefixes) and not any(a in name for a in ("lora_", "gate.")), name
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[0]["perceptual_loss"].startswith("none")
    assert [r["stage_step"] for r in log[1:]] == list(range(1, 13))


def test_resume_continues_from_the_saved_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(**SMALL, estimator_steps=3, base_steps=8, mor_steps=0)
    full = Trainer(initial_model("tiny", 0), config, tmp_path / "full", progress=False).run()

    real_batch = TrainingData.batch

    def interrupted(self: TrainingData, stage: str, index: int, progress: bool = False):  # type: ignore[no-untyped-def]
        if stage == "base" and index == 5:  # the base stage dies at its 6th step
            raise KeyboardInterrupt
        return real_batch(self, stage, index, progress)

    monkeypatch.setattr(TrainingData, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(initial_model("tiny", 0), config, tmp_path / "cut", progress=False).run()
    monkeypatch.setattr(TrainingData, "batch", real_batch)
    state = json.loads((tmp_path / "cut" / "checkpoint" / training.STATE_NAME).read_text())
    assert state["stage"] == "base" and state["stage_step"] == 5 and state["done"] == ["estimator"]
    resumed_model = MoRSR.from_pretrained(tmp_path / "cut" / "checkpoint")
    resumed = Trainer(resumed_model, config, tmp_path / "cut", progress=False).run()
    log = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    starts = [r for r in log if r.get("event") == "start"]
    assert starts[-1]["resumed_from"] == 8  # 3 estimator + 5 base steps
    assert [r["stage_step"] for r in log if r.get("stage") == "base"][-3:] == [6, 7, 8]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


def test_training_batches_by_stage() -> None:
    """The estimator learns at its own input size, the MoR stage routes on the whole image
    and trains on a region of it, and a batch depends only on (seed, stage, index)."""
    model = initial_model("tiny", 0)
    data = small_data(TrainConfig(**SMALL), model)
    est = data.batch("estimator", 3)
    assert est.lr.shape == (4, 3, 64, 64) and est.labels.shape == (4, 4)
    assert ((est.labels >= 0) & (est.labels <= 1)).all()
    mor = data.batch("mor", 0)
    assert mor.router_lr is not None and mor.router_lr.shape == (2, 3, 64, 64)
    assert mor.lr.shape == (2, 3, 8, 8) and mor.hr.shape == (2, 3, 32, 32)
    assert any(
        torch.equal(mor.lr, mor.router_lr[..., y : y + 8, x : x + 8]) for y in range(57) for x in range(57)
    )
    again = small_data(TrainConfig(**SMALL), model).batch("base", 5)
    torch.testing.assert_close(again.lr, data.batch("base", 5).lr, rtol=0, atol=0)
    assert not torch.equal(data.batch("base", 6).lr, again.lr)


def test_dead_leaves_add_content_for_the_estimator_only() -> None:
    """Synthetic images join the estimator's content, not the SR stages' (no colour cast from
    content that is not a photograph), and are seeded."""
    model = initial_model("tiny", 0)
    data = small_data(TrainConfig(**SMALL), model)
    content = data.estimator_content()
    assert len(content) == len(data.pool) + 2
    synthetic = content[len(data.pool) :]
    assert all(img.shape == (512, 512, 3) and img.dtype == np.uint8 for img in synthetic)
    assert all(any(p is q for q in data.pool) for p in data.colour_pool)  # SR stages: photos only
    again = small_data(TrainConfig(**SMALL), model).estimator_content()[len(data.pool) :]
    assert all(np.array_equal(a, b) for a, b in zip(synthetic, again, strict=True))


def test_dead_leaves_images_are_seeded_and_look_like_leaves() -> None:
    """Image i depends only on (seed, i); flat leaves and edges both occur, colours come from
    the palette's range."""
    palette = colour_palette([np.full((8, 8, 3), 40, np.uint8), np.full((8, 8, 3), 200, np.uint8)], 16, 0)
    images = dead_leaves_images(3, 128, palette, seed=0)
    assert all(
        np.array_equal(a, b) for a, b in zip(images[:2], dead_leaves_images(2, 128, palette, 0), strict=True)
    )
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], dead_leaves_images(1, 128, palette, seed=1)[0])
    for img in images:
        flat = (np.abs(np.diff(img.astype(int), axis=1)).sum(-1) == 0).mean()
        assert 0.1 < flat < 0.95  # flat interiors and edges
        # leaves are grey 40 or 200, shading and texture scale them by 0.6-1.4: 24-56 or 120-255
        assert img.min() >= 24 and not ((img > 56) & (img < 120)).any()


def test_evaluate_json_has_the_keys(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["evaluate", "--images", "6", "--json", "--no-teacher", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in (
        "psnr_sr",
        "psnr_bicubic",
        "ssim_sr",
        "ssim_bicubic",
        "spearman",
        "active_experts_by_severity",
    ):
        assert key in report
    assert set(report["spearman"]) >= {"blur", "noise", "jpeg"}
    assert set(report["active_experts_by_severity"]) == {"mild", "moderate", "severe"}
    assert 0 < report["ssim_bicubic"] <= 1 and report["psnr_bicubic"] > 10
    # the trained model with its colour step is close to bicubic in PSNR and in colour
    assert abs(report["psnr_sr"] - report["psnr_bicubic"]) < 2
    assert report["ciede_sr"] < report["ciede_bicubic"] + 1 and report["ciede_sr_vs_lr"] < 3
    levels = report["by_severity"]
    assert set(levels) == {"mild", "moderate", "severe"}
    # the per-severity means average to the overall mean (two images per level)
    assert np.mean([m["psnr_bicubic"] for m in levels.values()]) == pytest.approx(report["psnr_bicubic"])
    for name in ("active_experts.png", "grid.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_evaluate_lr_only_compares_the_round_trip_with_the_input(tmp_path: Path) -> None:
    from PIL import Image

    from mor_edge.photos import photos

    folder = tmp_path / "real"
    folder.mkdir()
    Image.fromarray(photos("eval")["china"]).save(folder / "china.png")
    args = ["evaluate", "--lr-only", "--photos", str(folder), "--images", "4", "--json", "--no-teacher"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    # bicubic up and antialiased bicubic down is nearly the identity; the model's round trip
    # is close to it in colour
    assert report["ciede_bicubic_vs_lr"] < 1.5 and report["ciede_sr_vs_lr"] < 3
    with Image.open(tmp_path / "out" / "grid.png") as grid:
        assert grid.size == (3 * 256, 4 * 256)


def test_evaluate_on_a_photo_folder(tmp_path: Path) -> None:
    """--photos crops the folder's images like the built-in held-out ones: a folder holding
    those photos (name order kept) reproduces the default report."""
    from PIL import Image

    from mor_edge.photos import evaluation_photos

    folder = tmp_path / "held-out"
    folder.mkdir()
    for i, (name, photo) in enumerate(evaluation_photos().items()):  # file names keep the order
        Image.fromarray(photo).save(folder / f"{i:02d}-{name}.png", compress_level=1)
    args = ["evaluate", "--images", "3", "--json", "--no-teacher", "--out", str(tmp_path / "out")]
    default = json.loads(CliRunner().invoke(main, args).output)
    result = CliRunner().invoke(main, [*args, "--photos", str(folder)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert report["photos"] == str(folder) and default["photos"].startswith("held-out (china")
    for key in (
        "psnr_sr",
        "psnr_bicubic",
        "ssim_sr",
        "ciede_sr",
        "by_severity",
        "active_experts_by_severity",
    ):
        assert report[key] == default[key], key
    missing = CliRunner().invoke(main, [*args, "--photos", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "no such folder" in missing.output


def test_the_builtin_model_is_the_trained_one() -> None:
    """Shipped as config + safetensors (no pickle), at most 20 MB, labelled as trained."""
    from mor_edge.builtin import BUILTIN_DIR, builtin_model

    files = sorted(p.name for p in BUILTIN_DIR.iterdir())
    assert files == ["config.json", "model.safetensors"]
    assert sum(p.stat().st_size for p in BUILTIN_DIR.iterdir()) <= 20 * 2**20
    model = builtin_model()
    assert "trained" in model.config.label and "untrained" not in model.config.label
    # trained, not seeded-random: its scores rank held-out degradations (seeded random: <= 0.34)
    pairs = degraded_pairs(model.config.sr_size, 24, seed=7)
    with torch.no_grad():
        s = model.route(pairs.lr).numpy()
    labels = [p.labels() for p in pairs.params]
    for k, name in enumerate(model.config.degradation_names[:3]):
        assert spearmanr(s[:, k], [lab[name] for lab in labels]).statistic > 0.55, name


def test_train_help_states_the_recipe_that_made_the_builtin_model() -> None:
    """`train --help` gives each stage's default from `TrainConfig` and the seed the built-in
    model was trained from, so a bare `mor-edge train` is that recipe."""
    from mor_edge.builtin import builtin_model

    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    recipe = TrainConfig()
    for field in ("estimator_steps", "base_steps", "mor_steps", "batch_size", "hr_size"):
        flag = "--" + field.replace("_", "-")
        assert f"(default {getattr(recipe, field)})" in text.split(flag, 1)[1].split(" --", 1)[0], flag
    assert "seed 1`" in builtin_model().config.label and "[default: 1;" in text.split("--seed", 1)[1]


def test_train_on_an_image_folder_and_refuse_bad_ones(tmp_path: Path) -> None:
    """`--images` crops from the user's photos (16-bit ones reduced to 8 bits); an empty
    folder or a damaged file is a one-line error and leaves no run folder behind."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photos / "a.png")
    Image.fromarray(rng.integers(0, 65536, (48, 40), dtype=np.uint16)).save(photos / "b.png")
    pool = training.load_image_pool(str(photos))
    assert [p.shape for p in pool] == [(40, 50, 3), (48, 40, 3)] and all(p.dtype == np.uint8 for p in pool)
    model = initial_model("tiny", 0)
    batch = small_data(TrainConfig(**SMALL, images=str(photos)), model).batch("base", 0)
    assert batch.hr.shape == (2, 3, 32, 32)

    empty = tmp_path / "empty"
    empty.mkdir()
    (photos / "c.jpg").write_bytes(b"not a jpeg")
    for folder, message in ((empty, "no images"), (photos, "c.jpg")):
        out = tmp_path / f"run-{folder.name}"
        result = CliRunner().invoke(main, ["train", "--images", str(folder), "--out", str(out)])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output and not out.exists()


def test_the_debian_photos_are_found_split_and_reduced() -> None:
    from mor_edge import photos as source

    installed = source.debian_photo_paths()
    if not installed:
        pytest.skip("no Debian photo package is installed (make photos)")
    listed = {Path(f).stem for files in source.DEBIAN_PHOTOS.values() for f in files}
    assert set(installed) <= listed
    held_out, train = source.debian_photos("eval"), source.debian_photos("train")
    assert set(held_out) | set(train) == set(installed) and not set(held_out) & set(train)
    assert 0.2 < len(held_out) / len(installed) < 0.3  # every fourth
    for photo in (*held_out.values(), *train.values()):
        assert photo.dtype == np.uint8 and photo.ndim == 3 and max(photo.shape[:2]) <= source.MAX_SIDE
    # they reach training and evaluation, after the built-in photos
    assert set(train) <= set(source.training_photos()) and set(held_out) <= set(source.evaluation_photos())
    assert list(source.evaluation_photos())[:2] == list(source.photos("eval"))


def test_the_photo_source_is_empty_without_the_packages(tmp_path: Path) -> None:
    from mor_edge import photos as source

    assert source.debian_photo_paths(tmp_path) == {}
    assert source.debian_photos("train", tmp_path) == {}


def test_evaluate_with_denoise_runs_the_model_at_that_setting(tmp_path: Path) -> None:
    """The same crops, the model at --denoise 1: bicubic's figures unchanged, SR's moved, and
    the setting named in the report and the printed header."""
    args = ["evaluate", "--images", "3", "--no-teacher", "--out", str(tmp_path / "out")]
    default = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
    cleaned = json.loads(CliRunner().invoke(main, [*args, "--json", "--denoise", "1"]).output)
    assert (default["denoise"], cleaned["denoise"]) == (0.0, 1.0)
    assert cleaned["psnr_bicubic"] == default["psnr_bicubic"]
    # per severity: over all three crops a loss on one and gains on others can cancel
    moved = [
        abs(cleaned["by_severity"][k]["psnr_sr"] - default["by_severity"][k]["psnr_sr"])
        for k in default["by_severity"]
    ]
    assert max(moved) > 0.01, moved
    text = CliRunner().invoke(main, [*args, "--denoise", "0.5"])
    assert text.exit_code == 0 and "degraded crops (seed 1234), --denoise 0.5" in text.output
