"""A generated corpus of broken and hostile input: model folders, manifests, calibration sets,
options and paths. Every case must end in one line and exit code 1: no traceback, no partial
file, no input changed, and no file outside the folder it names ever opened (an audit hook
records every `open` of the planted canary)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from mor_edge.builtin import BUILTIN_DIR
from mor_edge.cli import main
from mor_edge.export.manifest import MANIFEST_NAME, sha256_file

from .fixtures import snapshot
from .toy_artifact import write_toy_artifact

CANARY_NAME = "canary-secret.txt"
OPENED: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.fsdecode(args[0])
        if CANARY_NAME in name:
            OPENED.append(name)


sys.addaudithook(_audit)


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / CANARY_NAME
    path.write_text("do not read\n")
    OPENED.clear()
    return path


def run_refused(*args: str, expect: str | None = None) -> str:
    """Run the CLI; assert exit 1 with a one-line 'Error:' and no traceback or crash."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 1, (args, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), (args, repr(result.exception))
    lines = result.output.splitlines()  # a progress bar may share the error's line
    errors = [line[line.index("Error:") :] for line in lines if "Error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    if expect is not None:
        assert expect in errors[0], errors[0]
    return errors[0]


# -- model folders -----------------------------------------------------------------------
def _config() -> dict[str, Any]:
    return dict(json.loads((BUILTIN_DIR / "config.json").read_text()))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


CONFIG_CASES: dict[str, Callable[[dict[str, Any]], None] | str] = {
    "bad json": "{not json",
    "a list": "[1, 2]",
    "empty": "",
    "deep": "[" * 100_000 + "]" * 100_000,
    "binary": "\udcff\x00\x01",
    "unknown key": _set("surprise", 1),
    "lr_size negative": _set("lr_size", -64),
    "lr_size odd": _set("lr_size", 63),
    "lr_size string": _set("lr_size", "64"),
    "scale 0": _set("scale", 0),
    "scale huge": _set("scale", 10**6),
    "scale float": _set("scale", 4.0),
    "scale bool": _set("scale", True),
    "channels absurd": _set("vae.block_out_channels", [16, 32, 10**6]),
    "channels zero": _set("unet.block_out_channels", [0, 64]),
    "channels string": _set("unet.block_out_channels", "wide"),
    "vae missing": lambda c: c.pop("vae"),
    "unet a list": _set("unet", [1]),
    "latent channels 0": _set("vae.latent_channels", 0),
    "scaling factor nan": _set("vae.scaling_factor", float("nan")),
    "clip layers huge": _set("clip_vision.num_hidden_layers", 10**5),
    "prompt pairs short": _set("prompt_pairs", [["a", "b"]]),
    "prompt pairs empty": _set("prompt_pairs", []),
    "prompt length 0": _set("prompt_length", 0),
    "mor rank 0": _set("mor.rank", 0),
    "mor shared >= rank": _set("mor.shared", 16),
    "mor top_k 0": _set("mor.top_k", 0),
    "mor unknown key": _set("mor.experts", 3),
    "timestep past schedule": _set("timestep", 5000),
    "colour levels 0": _set("colour_levels", 0),
    "colour fix unknown": _set("colour_fix", "sepia"),
    "estimator input unknown": _set("estimator_input", "hsv"),
    "prediction type unknown": _set("prediction_type", "sample"),
    "norm groups not dividing": _set("vae.norm_num_groups", 7),
}


def _weights() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(BUILTIN_DIR / "model.safetensors"))


def _weights_case(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        weights = _weights()
        edit(weights)
        save_file(weights, str(path))

    return write


def _first(weights: dict[str, torch.Tensor]) -> str:
    return sorted(weights)[0]


WEIGHT_CASES: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes((BUILTIN_DIR / "model.safetensors").read_bytes()[:5000]),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "empty": lambda p: p.write_bytes(b""),
    "pickle": lambda p: p.write_bytes(pickle.dumps({"x": 1})),
    "torch zip": lambda p: torch.save({"x": torch.zeros(1)}, p),
    "header lies": lambda p: p.write_bytes((10**12).to_bytes(8, "little") + b"{}"),
    "missing tensor": _weights_case(lambda w: w.pop(_first(w))),
    "extra tensor": _weights_case(lambda w: w.__setitem__("extra.weight", torch.zeros(2))),
    "wrong shape": _weights_case(lambda w: w.__setitem__(_first(w), torch.zeros(3, 3))),
    "wrong dtype": _weights_case(lambda w: w.__setitem__(_first(w), w[_first(w)].double())),
    "nan weights": _weights_case(lambda w: w[_first(w)].fill_(float("nan"))),
    "inf weights": _weights_case(lambda w: w[_first(w)].fill_(float("inf"))),
}


def _model_folder(root: Path) -> Path:
    folder = root / "model"
    shutil.copytree(BUILTIN_DIR, folder)
    return folder


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_broken_config_json(tmp_path: Path, case: str) -> None:
    folder = _model_folder(tmp_path)
    edit = CONFIG_CASES[case]
    if isinstance(edit, str):
        (folder / "config.json").write_text(edit, errors="surrogateescape")
    else:
        config = _config()
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    before = snapshot(folder)
    message = run_refused("info", str(folder))
    assert "config.json" in message
    assert snapshot(folder) == before


@pytest.mark.parametrize("case", sorted(WEIGHT_CASES))
def test_broken_weights(tmp_path: Path, case: str) -> None:
    folder = _model_folder(tmp_path)
    WEIGHT_CASES[case](folder / "model.safetensors")
    run_refused("info", str(folder), expect="model.safetensors")


def test_model_folder_files_must_be_its_own(tmp_path: Path, canary: Path) -> None:
    folder = _model_folder(tmp_path)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(canary)
    run_refused("info", str(folder), expect="not a regular file")
    run_refused("info", str(tmp_path / "nope"), expect="no such model folder")
    run_refused("info", str(canary))
    assert not OPENED


# -- manifests ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_artifact(tmp_path_factory.mktemp("toy") / "artifact")


def _pointing(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return _set(field, value)


def _stage(stage: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["stages"][stage].__setitem__(key, value)


def _pop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[key]
        node.pop(last)

    return edit


MANIFEST_CASES: dict[str, Callable[[dict[str, Any]], None] | str] = {
    "not json": "{",
    "a list": "[]",
    "deeply nested": "[" * 200_000 + "]" * 200_000,
    "schema true": _set("schema_version", True),
    "schema string": _set("schema_version", "1"),
    "schema 2": _set("schema_version", 2),
    **{
        f"no {key}": _pop(key)
        for key in ("target", "routing", "model", "scale", "precision", "stages", "files")
    },
    "stages a list": _set("stages", []),
    "files a list": _set("files", []),
    "stage a string": _stage("unet", "variants", "unet.onnx"),
    "stage entry a string": lambda m: m["stages"].__setitem__("unet", "unet.onnx"),
    "empty variants": _stage("unet", "variants", []),
    "variant without file": lambda m: m["stages"]["unet"]["variants"][0].pop("file"),
    "unknown stage": lambda m: m["stages"].__setitem__("extra", m["stages"]["unet"]),
    "missing stage": _pop("stages.decoder"),
    "buckets empty": _set("routing.buckets", []),
    "buckets strings": _set("routing.buckets", [["a", "b", "c", "d"]]),
    "buckets ragged": _set("routing.buckets", [[0.5] * 4, [0.5] * 3]),
    "buckets nan": _set("routing.buckets", [[float("nan")] * 4]),
    "buckets null for static": _set("routing.buckets", None),
    "bucket_variant 999": _stage("unet", "bucket_variant", [999]),
    "bucket_variant string": _stage("unet", "bucket_variant", ["0"]),
    "bucket_variant negative": _stage("unet", "bucket_variant", [-1]),
    "bucket_variant too short": _stage("unet", "bucket_variant", []),
    "scale huge": _set("scale", 10**9),
    "scale negative": _set("scale", -4),
    "scale string": _set("scale", "4"),
    "scale zero": _set("scale", 0),
    "router shape short": lambda m: m["stages"]["router"]["inputs"][0].__setitem__("shape", [1, 3]),
    "router shape 2^64": lambda m: m["stages"]["router"]["inputs"][0].__setitem__(
        "shape", [1, 3, 2**64, 2**64]
    ),
    "router shape 0x0": lambda m: m["stages"]["router"]["inputs"][0].__setitem__("shape", [1, 3, 0, 0]),
    "router shape 100000": lambda m: m["stages"]["router"]["inputs"][0].__setitem__(
        "shape", [1, 3, 100000, 100000]
    ),
    "router input renamed": lambda m: m["stages"]["router"]["inputs"][0].__setitem__("name", "image"),
    "tensor dtype unknown": lambda m: m["stages"]["unet"]["inputs"][0].__setitem__("dtype", "complex128"),
    "routing mode unknown": _set("routing.mode", "telepathic"),
    "precision unknown": _set("precision", "int3"),
    "stage precision unknown": _stage("unet", "precision", "int3"),
    "target unknown": _set("target", "tpu"),
    "model hash short": _set("model.hash", "abc"),
    "colour margin negative": _set("colour.tile_margin", -1),
    "colour margin huge": _set("colour.tile_margin", 10**9),
    "hash not hex": lambda m: m["files"].__setitem__("unet.onnx", "z" * 64),
    "file not listed": lambda m: m["files"].pop("unet.onnx"),
    "file listed twice under another name": lambda m: m["files"].__setitem__("unet.onnx/", "0" * 64),
    "file absolute": lambda m: m["files"].__setitem__("/etc/passwd", "0" * 64),
    "file dotdot": lambda m: m["files"].__setitem__("../x.onnx", "0" * 64),
    "file backslash": lambda m: m["files"].__setitem__("..\\x.onnx", "0" * 64),
    "stage file absolute": lambda m: m["stages"]["decoder"]["variants"][0].__setitem__("file", "/etc/passwd"),
    "stage file dotdot": lambda m: m["stages"]["decoder"]["variants"][0].__setitem__(
        "file", "../decoder.onnx"
    ),
    "stage file dot": lambda m: m["stages"]["decoder"]["variants"][0].__setitem__("file", "./decoder.onnx"),
    "stage file empty": lambda m: m["stages"]["decoder"]["variants"][0].__setitem__("file", ""),
    "stage file nul": lambda m: m["stages"]["decoder"]["variants"][0].__setitem__("file", "decoder\x00.onnx"),
}


def _tampered(toy: Path, root: Path, edit: Callable[[dict[str, Any]], None] | str) -> Path:
    folder = root / "artifact"
    shutil.copytree(toy, folder, symlinks=True)
    if isinstance(edit, str):
        (folder / MANIFEST_NAME).write_text(edit)
    else:
        manifest = copy.deepcopy(json.loads((toy / MANIFEST_NAME).read_text()))
        edit(manifest)
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def _image(root: Path) -> Path:
    from PIL import Image

    path = root / "in.png"
    Image.new("RGB", (20, 12), (120, 80, 40)).save(path)
    return path


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_broken_manifest(toy: Path, tmp_path: Path, case: str) -> None:
    folder = _tampered(toy, tmp_path, MANIFEST_CASES[case])
    before = snapshot(folder)
    out = tmp_path / "out"
    out.mkdir()
    run_refused("upscale", str(_image(tmp_path)), str(out / "x.png"), "--artifact", str(folder))
    run_refused("bench", str(folder), "--runs", "1", "--warmup", "0")
    run_refused("parity", str(folder), "--samples", "1")
    assert list(out.iterdir()) == [] and snapshot(folder) == before


def _relisted(folder: Path, rel: str) -> None:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    target = folder / rel
    manifest["files"][rel] = sha256_file(target) if target.is_file() else "0" * 64
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_files_outside_the_artifact_are_never_opened(toy: Path, tmp_path: Path, canary: Path) -> None:
    folder = _tampered(toy, tmp_path, lambda m: None)
    (folder / "decoder.onnx").unlink()
    (folder / "decoder.onnx").symlink_to(canary)  # a symlink out, its hash listed
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"]["decoder.onnx"] = hashlib.sha256(b"do not read\n").hexdigest()
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    run_refused("bench", str(folder), "--runs", "1", expect="symbolic link")
    link_dir = _tampered(toy, tmp_path / "b", lambda m: None)
    (link_dir / "sub").symlink_to(tmp_path, target_is_directory=True)  # a folder link out
    manifest = json.loads((link_dir / MANIFEST_NAME).read_text())
    manifest["files"][f"sub/{CANARY_NAME}"] = hashlib.sha256(b"do not read\n").hexdigest()
    (link_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    run_refused("bench", str(link_dir), "--runs", "1", expect="symbolic link")
    assert not OPENED


def test_a_swapped_or_damaged_stage_file_is_caught(toy: Path, tmp_path: Path) -> None:
    folder = _tampered(toy, tmp_path, lambda m: None)
    shutil.copy(folder / "encoder.onnx", folder / "decoder.onnx")  # a valid graph, wrong stage
    _relisted(folder, "decoder.onnx")
    run_refused(
        "bench",
        str(folder),
        "--runs",
        "1",
        expect="decoder.onnx: inputs [('lr', (1, 3, 16, 16), 'float32')] are not the decoder stage's",
    )
    (folder / "decoder.onnx").write_bytes(b"not a graph")
    _relisted(folder, "decoder.onnx")
    run_refused("bench", str(folder), "--runs", "1", expect="decoder.onnx does not load")
    (folder / "decoder.onnx").write_bytes(b"")
    run_refused("bench", str(folder), "--runs", "1", expect="does not match its sha256")
    (folder / "decoder.onnx").unlink()
    (folder / "decoder.onnx").mkdir()
    run_refused("bench", str(folder), "--runs", "1", expect="not a regular file")


def test_the_toy_artifact_itself_runs(toy: Path, tmp_path: Path) -> None:
    """The corpus's base case is valid: every refusal above comes from the tampering."""
    from PIL import Image

    result = CliRunner().invoke(
        main, ["upscale", str(_image(tmp_path)), str(tmp_path / "o.png"), "--artifact", str(toy)]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o.png").size == (80, 48)


# -- calibration sets --------------------------------------------------------------------
def _calibration_set(
    root: Path,
    recipe_edit: Callable[[dict[str, Any]], None] | None = None,
    tensors_edit: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> Path:
    n, k = 4, 4
    folder = root / "calib"
    folder.mkdir()
    recipe: dict[str, Any] = {
        "format_version": 1,
        "seed": 0,
        "samples": n,
        "pool_size": 16,
        "images": "built-in training photos",
        "sr_size": 64,
        "model_hash": "0" * 64,
        "model_name": "toy",
        "bucket_levels": 1,
        "buckets": [[0.5] * k],
        "pool_natural": [16],
        "routings": ["static"],
    }
    tensors = {
        "lr": torch.rand(n, 3, 16, 16),
        "s": torch.rand(n, k),
        "bucket": torch.zeros(n, dtype=torch.int64),
        "natural_bucket": torch.zeros(n, dtype=torch.int64),
        "static.latent": torch.rand(n, 4, 16, 16),
        "static.x0": torch.rand(n, 4, 16, 16),
    }
    if recipe_edit:
        recipe_edit(recipe)
    if tensors_edit:
        tensors_edit(tensors)
    (folder / "recipe.json").write_text(json.dumps(recipe))
    save_file(tensors, str(folder / "calibration.safetensors"))
    return folder


CALIBRATION_CASES: dict[
    str, tuple[Callable[[dict[str, Any]], None] | None, Callable[[dict[str, torch.Tensor]], None] | None]
] = {
    "recipe a list": (lambda r: r.clear(), None),
    "format 2": (_set("format_version", 2), None),
    "samples 0": (_set("samples", 0), None),
    "samples string": (_set("samples", "4"), None),
    "buckets empty": (_set("buckets", []), None),
    "buckets nan": (_set("buckets", [[float("nan")] * 4]), None),
    "routings unknown": (_set("routings", ["psychic"]), None),
    "hash short": (_set("model_hash", "x"), None),
    "seed negative": (_set("seed", -1), None),
    "lr missing": (None, lambda t: t.pop("lr")),
    "lr wrong rows": (None, lambda t: t.__setitem__("lr", torch.rand(3, 3, 16, 16))),
    "s wrong width": (None, lambda t: t.__setitem__("s", torch.rand(4, 7))),
    "lr nan": (None, lambda t: t["lr"].fill_(float("nan"))),
    "bucket out of range": (None, lambda t: t.__setitem__("bucket", torch.full((4,), 9, dtype=torch.int64))),
    "captured missing": (None, lambda t: t.pop("static.x0")),
}


@pytest.mark.parametrize("case", sorted(CALIBRATION_CASES))
def test_broken_calibration_set(tmp_path: Path, case: str) -> None:
    from mor_edge.calib.calibration_set import CalibrationSet
    from mor_edge.errors import UserError

    folder = _calibration_set(tmp_path, *CALIBRATION_CASES[case])
    with pytest.raises(UserError) as error:
        CalibrationSet.load(folder)
    assert "\n" not in str(error.value) and str(folder) in str(error.value)


def test_calibration_files_damaged_or_linked(tmp_path: Path, canary: Path) -> None:
    folder = _calibration_set(tmp_path)
    (folder / "calibration.safetensors").write_bytes(pickle.dumps([1]))
    out = tmp_path / "art"
    run_refused("export", "--out", str(out), "--precision", "int8", "--calib", str(folder), expect="pickle")
    (folder / "calibration.safetensors").unlink()
    (folder / "calibration.safetensors").symlink_to(canary)
    run_refused(
        "export", "--out", str(out), "--precision", "int8", "--calib", str(folder), expect="plain files"
    )
    assert not out.exists() and not OPENED


# -- options and paths -------------------------------------------------------------------
OPTION_CASES: dict[str, tuple[str, ...]] = {
    "parity seed -1": ("parity", "ART", "--seed", "-1"),
    "calibrate seed -1": ("calibrate", "--out", "OUT/c", "--seed", "-1"),
    "evaluate seed -1": ("evaluate", "--seed", "-1"),
    "train seed -1": ("train", "--out", "OUT/r", "--seed", "-1"),
    "threads huge": ("bench", "ART", "--threads", "99999999999"),
    "threads 0": ("bench", "ART", "--threads", "0"),
    "tile huge": ("upscale", "IMG", "OUT/x.png", "--tile", "100000"),
    "tile 2048": ("upscale", "IMG", "OUT/x.png", "--tile", "2048"),
    "tile tiny": ("upscale", "IMG", "OUT/x.png", "--tile", "4"),
    "overlap past tile": ("upscale", "IMG", "OUT/x.png", "--tile", "16", "--overlap", "16"),
    "tile for artifact": ("upscale", "IMG", "OUT/x.png", "--artifact", "ART", "--tile", "32"),
    "model with artifact": ("upscale", "IMG", "OUT/x.png", "--artifact", "ART", "--model", "ART"),
    "norm whole on artifact": ("upscale", "IMG", "OUT/x.png", "--artifact", "ART", "--norm", "whole"),
    "denoise on artifact": ("upscale", "IMG", "OUT/x.png", "--artifact", "ART", "--denoise", "0.5"),
    "denoise above 1": ("upscale", "IMG", "OUT/x.png", "--denoise", "1.5"),
    "denoise not a number": ("evaluate", "--out", "OUT/e", "--denoise", "nan"),
    "max minutes not a number": ("upscale", "IMG", "OUT/x.png", "--max-minutes", "nan"),
    "unknown output format": ("upscale", "IMG", "OUT/x.xyz"),
    "output folder missing": ("upscale", "IMG", "OUT/none/x.png"),
    "output is a folder": ("upscale", "IMG", "OUT"),
    "input missing": ("upscale", "OUT/none.png", "OUT/x.png"),
    "input not an image": ("upscale", "ART/manifest.json", "OUT/x.png"),
    "input is the output": ("upscale", "IMG", "IMG"),
    "name too long": ("upscale", "IMG", "OUT/" + "n" * 300 + ".png"),
    "samples 0": ("parity", "ART", "--samples", "0"),
    "runs 0": ("bench", "ART", "--runs", "0"),
    "bench no artifact": ("bench", "OUT"),
    "export out under /proc": ("export", "--out", "/proc/mor-edge-test"),
    "export out missing parent": ("export", "--out", "OUT/a/b/c"),
    "export out exists": ("export", "--out", "OUT"),
    "export force on a user folder": ("export", "--out", "OUT", "--force"),
    "export unknown target": ("export", "--out", "OUT/a", "--target", "tpu"),
    "export precision for target": ("export", "--out", "OUT/a", "--target", "onnx", "--precision", "w8"),
    "export bucket levels 9": ("export", "--out", "OUT/a", "--bucket-levels", "9"),
    "export calib missing": ("export", "--out", "OUT/a", "--precision", "int8", "--calib", "OUT/none"),
    "export bucket levels with dynamic": (
        "export",
        "--out",
        "OUT/a",
        "--routing",
        "dynamic",
        "--bucket-levels",
        "3",
    ),
    "export dynamic form with static": ("export", "--out", "OUT/a", "--dynamic-form", "gather"),
    "export keep-float with fp32": ("export", "--out", "OUT/a", "--keep-float", "auto"),
    "export calibration method with fp32": ("export", "--out", "OUT/a", "--calibration-method", "entropy"),
    "export calib with fp16": ("export", "--out", "OUT/a", "--precision", "fp16", "--calib", "OUT"),
    "calibrate out under /proc": ("calibrate", "--out", "/proc/mor-edge-test"),
    "calibrate samples below buckets": ("calibrate", "--out", "OUT/c", "--samples", "2"),
    "calibrate images missing": ("calibrate", "--out", "OUT/c", "--images", "OUT/none"),
    "evaluate out is a file": ("evaluate", "--out", "IMG"),
    "evaluate photos missing": ("evaluate", "--photos", "OUT/none", "--out", "OUT/e"),
    "evaluate photos none": ("evaluate", "--photos", "OUT", "--out", "OUT/e"),
    "train hr size odd": ("train", "--out", "OUT/r", "--hr-size", "48"),
    "train images missing": ("train", "--out", "OUT/r", "--images", "OUT/none"),
    "train sd without clip": ("train", "--out", "OUT/r", "--sd", "OUT"),
    "train teacher weight without teacher": ("train", "--out", "OUT/r", "--teacher-weight", "0.5"),
    "train unknown teacher": ("train", "--out", "OUT/r", "--teacher", "esrgan"),
    "train teacher weight above 1": (
        "train",
        "--out",
        "OUT/r",
        "--teacher",
        "realesrgan-x4plus",
        "--teacher-weight",
        "2",
    ),
    "teacher weights missing": ("teacher", "--weights", "OUT/none.pth", "--out", "OUT/t"),
    "teacher weights an image": ("teacher", "--weights", "IMG", "--out", "OUT/t"),
    "info missing": ("info", "OUT/none"),
    "unknown command": ("frobnicate",),
    "unknown option": ("upscale", "--frob"),
    "missing argument": ("upscale",),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_bad_options_and_paths(toy: Path, tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    image = _image(tmp_path)
    places = {"ART": str(toy), "OUT": str(out), "IMG": str(image)}
    args = [
        places.get(a.split("/")[0], a.split("/")[0]) + a[len(a.split("/")[0]) :] for a in OPTION_CASES[case]
    ]
    before, image_before, entries = snapshot(out), image.read_bytes(), sorted(out.rglob("*"))
    run_refused(*args)
    assert snapshot(out) == before and image.read_bytes() == image_before
    assert sorted(out.rglob("*")) == entries  # no folder made either
    assert not any(p.name.startswith(".") for p in out.iterdir())
