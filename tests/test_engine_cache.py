"""`upscale`'s default engine: the model's export, made once, parity-checked, cached by model
hash and package version, rebuilt when broken, and the reference where it cannot run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import mor_edge
from mor_edge.atomic import mark
from mor_edge.builtin import random_model
from mor_edge.cli import main
from mor_edge.engine_cache import ONNX_FP32, cache_folder, engine_kinds, lookup
from mor_edge.export.manifest import Artifact
from mor_edge.model import MoRSR, model_fingerprint
from mor_edge.runtimes.parity import GATES


@pytest.fixture
def default_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default as a user has it (conftest makes tests use the reference): a fresh cache."""
    monkeypatch.delenv("MOR_EDGE_ENGINE", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOR_EDGE_CACHE", str(cache))
    return cache


def photo(path: Path, size: tuple[int, int] = (80, 72)) -> Path:
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3)), np.ones((8, 8, 1)))
    Image.fromarray(base.astype(np.uint8)).save(path)
    return path


def upscale(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["upscale", *args])
    return result.exit_code, result.stdout, result.stderr


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64)


def entries(cache: Path) -> list[str]:
    """The cache's export entries and failure records (not OpenVINO's blob folder)."""
    return sorted(p.name for p in cache.iterdir() if p.name != "openvino")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


def test_default_engine_is_the_cached_export_made_once(
    default_engine: Path, tmp_path: Path, tiny_model: MoRSR, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = photo(tmp_path / "in.png")
    kinds = engine_kinds()  # OpenVINO bf16 first where this CPU has bfloat16, then ORT FP32
    kind, last = kinds[0], kinds[-1]
    folder = cache_folder(None, kind)
    assert folder is not None
    with monkeypatch.context() as strict:  # an export that fails its parity gates is not used
        strict.setitem(GATES, kind.precision, {**GATES[kind.precision], "end_to_end_psnr_db": 1000.0})
        code, _, err = upscale(str(src), str(tmp_path / "refused.png"))
    assert code == 0, err
    assert not folder.exists()
    failed = folder.parent / f"{folder.name}.failed"  # recorded: not exported again next time
    assert "failed its parity check (end_to_end: PSNR" in failed.read_text()
    if kind == last:  # nothing else to try: the reference runs, saying why
        assert "engine: PyTorch reference" in err and "failed its parity check (end_to_end: PSNR" in err
        assert entries(folder.parent) == [failed.name]
    else:  # the next kind is made and used
        fallback = cache_folder(None, last)
        assert fallback is not None and fallback.is_dir()
        assert f"engine: {last.runtime_module}" in err and str(fallback) in err
        assert entries(folder.parent) == sorted([fallback.name, failed.name])
    code, _, err = upscale(str(src), str(tmp_path / "again.png"))  # the record, not a new export
    assert code == 0 and "first run of this model" not in err, err
    if kind == last:
        assert "when first made (delete" in err
    failed.unlink()  # as the message says: the next run tries again (the gates are back)
    stale = folder.parent / f"{folder.name.rsplit('-v', 1)[0]}-v0.0.1"  # an older version's entry
    stale.mkdir()
    mark(stale, "artifact")

    code, _, err = upscale(str(src), str(tmp_path / "first.png"))
    assert code == 0, err
    assert not stale.exists() and "removed 1 cached export(s) of older mor-edge versions" in err
    assert "first run of this model" in err and f"engine: {kind.runtime_module}" in err and str(folder) in err
    if kind.precision == "bf16":  # the engine line says what OpenVINO computed in
        assert "(CPU, bf16, " in err
    if kind.target == "openvino":  # its compiled blobs are kept in the same cache folder
        assert any((folder.parent / "openvino").glob("*.blob"))
    artifact = Artifact(folder)  # hashes checked
    assert artifact.checked.model.hash == model_fingerprint(tiny_model)
    made_as = (artifact.target, artifact.routing, artifact.precision)
    assert made_as == (kind.target, kind.routing, kind.precision)
    made = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())

    # Found again, without importing PyTorch (the cache is keyed by the model's files).
    script = (
        "import sys\nfrom mor_edge.cli import main\n"
        f"try:\n    main(['upscale', {str(src)!r}, {str(tmp_path / 'second.png')!r}])\n"
        "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "assert 'torch' not in sys.modules, 'a cache hit imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "first run" not in done.stderr and str(folder) in done.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == made  # reused
    assert np.array_equal(pixels(tmp_path / "first.png"), pixels(tmp_path / "second.png"))

    code, _, err = upscale(str(src), str(tmp_path / "reference.png"), "--reference")
    assert code == 0 and "engine: PyTorch reference" in err and "asked for" in err
    # The export computes what the reference does (its parity gates passed when it was made).
    assert psnr(pixels(tmp_path / "first.png"), pixels(tmp_path / "reference.png")) > 45

    decoder = folder / artifact.checked.stages["decoder"].variants[0].file
    decoder.write_bytes(decoder.read_bytes()[:-16] + bytes(16))
    # A damaged entry is not trusted: found broken, it is removed, and the next run makes it
    # again the way the first run did above (not repeated here: a minute of the suite).
    assert lookup(None, kind) is None and not folder.exists()


def test_with_one_kind_a_failed_gate_runs_the_reference_and_is_recorded(
    default_engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The branch a CPU without bfloat16 takes (ONNX Runtime FP32 alone): the reference runs,
    saying why, and the record spares the next run an export until it is deleted."""
    monkeypatch.setenv("MOR_EDGE_ENGINE", "onnxruntime")
    assert engine_kinds() == [ONNX_FP32]
    folder = cache_folder(None, ONNX_FP32)
    assert folder is not None
    failed = folder.parent / f"{folder.name}.failed"
    src = photo(tmp_path / "in.png", (40, 32))
    monkeypatch.setitem(GATES, "fp32", {**GATES["fp32"], "end_to_end_psnr_db": 1000.0})
    code, _, err = upscale(str(src), str(tmp_path / "a.png"))
    assert code == 0 and "first run of this model" in err, err
    assert "engine: PyTorch reference" in err and "failed its parity check (end_to_end: PSNR" in err
    assert entries(folder.parent) == [failed.name]
    code, _, err = upscale(str(src), str(tmp_path / "b.png"))
    assert code == 0 and "first run of this model" not in err, err
    assert "engine: PyTorch reference" in err and f"when first made (delete {failed} to try again)" in err


def test_the_cache_is_keyed_by_the_model_files(tmp_path: Path) -> None:
    random_model(seed=1).save_pretrained(tmp_path / "other")
    builtin, other = cache_folder(None, ONNX_FP32), cache_folder(str(tmp_path / "other"), ONNX_FP32)
    assert builtin is not None and other is not None and builtin.parent == other.parent
    assert builtin != other and other.name.endswith(f"{ONNX_FP32.tag}-v{mor_edge.__version__}")
    (tmp_path / "other" / "model.safetensors").write_bytes(b"changed")
    assert cache_folder(str(tmp_path / "other"), ONNX_FP32) != other
    assert cache_folder(str(tmp_path / "missing"), ONNX_FP32) is None  # loading the model reports why
    # --denoise is part of the key where it is not the config's own (the built-in model's is 0)
    assert cache_folder(None, ONNX_FP32, 0.0) == cache_folder(None, ONNX_FP32, None) == builtin
    assert len({builtin, cache_folder(None, ONNX_FP32, 0.5), cache_folder(None, ONNX_FP32, 1.0)}) == 3


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--reference"], "asked for"),
        (["--norm", "whole", "--tile", "32"], "--norm whole"),
        (["--tile", "32"], "--tile 32; the cached export takes 64x64"),
    ],
)
def test_the_reference_runs_when_asked_or_needed(
    default_engine: Path, tmp_path: Path, extra: list[str], why: str
) -> None:
    code, _, err = upscale(str(photo(tmp_path / "in.png", (40, 32))), str(tmp_path / "out.png"), *extra)
    assert code == 0, err
    assert "engine: PyTorch reference" in err and why in err
    assert not default_engine.exists()  # nothing was exported


def test_a_missing_runtime_falls_back_to_the_reference(
    default_engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    missing = ("onnxruntime", "openvino")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    code, _, err = upscale(str(photo(tmp_path / "in.png", (40, 32))), str(tmp_path / "out.png"))
    assert code == 0, err
    assert "engine: PyTorch reference" in err and "onnxruntime is not installed" in err


def test_a_cache_another_process_is_building_is_not_waited_for(
    default_engine: Path, tmp_path: Path, tiny_model: MoRSR, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOR_EDGE_ENGINE", "onnxruntime")  # the one kind: nothing to fall back on
    assert engine_kinds() == [ONNX_FP32]
    folder = cache_folder(None, ONNX_FP32)
    assert folder is not None
    staging = folder.parent / f"{folder.name}.unchecked"
    staging.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (staging.parent / f".{staging.name}.lock").write_text(str(other.pid))
        code, _, err = upscale(str(photo(tmp_path / "in.png", (40, 32))), str(tmp_path / "out.png"))
    finally:
        other.kill()
        other.wait()
    assert code == 0, err
    assert "engine: PyTorch reference" in err and f"pid {other.pid}" in err
    assert not folder.exists()


def test_bad_input_fails_before_any_export(default_engine: Path, tmp_path: Path) -> None:
    code, _, err = upscale(str(tmp_path / "missing.png"), str(tmp_path / "out.png"))
    assert code == 1 and "no such file" in err
    code, _, err = upscale(str(photo(tmp_path / "in.png")), str(tmp_path / "nowhere" / "out.png"))
    assert code == 1 and "does not exist" in err
    (tmp_path / "text.png").write_text("not a picture")
    code, _, err = upscale(str(tmp_path / "text.png"), str(tmp_path / "out.png"))
    assert code == 1 and "not an image" in err
    assert not default_engine.exists() and sorted(os.listdir(tmp_path)) == ["in.png", "text.png"]


def test_entries_of_older_versions_are_pruned_and_nothing_else(tmp_path: Path) -> None:
    from mor_edge.engine_cache import prune_older_versions

    folder = cache_folder(None, ONNX_FP32)
    assert folder is not None
    stem = folder.name.rsplit("-v", 1)[0]
    root = tmp_path / "cache"
    root.mkdir()

    def entry(name: str, ours: bool = True) -> Path:
        path = root / name
        path.mkdir()
        (path / "stage.onnx").write_bytes(b"graph")
        if ours:
            mark(path, "artifact")
        return path

    old = entry(f"{stem}-v0.1.9")
    old_staging = entry(f"{stem}-v0.2.0.unchecked")
    old_record = root / f"{stem}-v0.2.0.failed"
    old_record.write_text("failed\n")
    current = entry(folder.name)
    newer = entry(f"{stem}-v10.0.0")  # another environment's newer mor-edge shares the cache
    not_ours = entry(f"{stem}-v0.1.0", ours=False)  # a folder mor-edge did not make
    other = entry("photos-v0.1.0")  # not an entry's name
    assert sorted(prune_older_versions(root)) == sorted([old, old_staging, old_record])
    assert sorted(root.iterdir()) == sorted([current, newer, not_ours, other])
    assert (current / "stage.onnx").read_bytes() == b"graph"
    assert prune_older_versions(root) == []
    assert prune_older_versions(tmp_path / "missing") == []


def test_openvino_blobs_live_in_the_cache_folder_and_are_trimmed_oldest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    import time

    from mor_edge.runtimes.openvino_runtime import blob_cache_limit, default_cache_dir, trim_blob_cache

    monkeypatch.setenv("MOR_EDGE_CACHE", str(tmp_path / "moved"))
    assert default_cache_dir() == tmp_path / "moved" / "openvino"  # tests never write to ~/.cache

    now = time.time()
    ages_hours = {"a": 30, "b": 20, "c": 10, "d": 0.5, "e": 0.1}  # a is the oldest
    for name, hours in ages_hours.items():
        blob = tmp_path / f"{name}.blob"
        blob.write_bytes(bytes(1000))
        os.utime(blob, (now - hours * 3600, now - hours * 3600))
    (tmp_path / "notes.txt").write_bytes(bytes(5000))  # not OpenVINO's: never touched
    oldest_three = [tmp_path / f"{name}.blob" for name in "abc"]
    assert trim_blob_cache(tmp_path, limit=2500) == oldest_three
    assert sorted(p.name for p in tmp_path.glob("*.blob")) == ["d.blob", "e.blob"]
    # Over the limit, but written in the last hour: kept.
    assert trim_blob_cache(tmp_path, limit=100) == [] and (tmp_path / "notes.txt").is_file()
    assert trim_blob_cache(tmp_path, limit=2000) == []
    assert blob_cache_limit() == 4 << 30
    monkeypatch.setenv("MOR_EDGE_OPENVINO_CACHE_GIB", "0.5")
    assert blob_cache_limit() == 1 << 29
