"""No data loss: destructive steps only on mor-edge's own folders and only after every check,
folder mode that cannot overwrite its inputs, one writer per destination, clean interrupts."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mor_edge.atomic import MARKER, atomic_folder, claim
from mor_edge.cli import main
from mor_edge.errors import UserError
from mor_edge.model import MoRSR
from mor_edge.model_folder import write_weights_file

from .fixtures import snapshot

FAST = ["--tile", "16", "--overlap", "4"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def picture(path: Path, seed: int = 0, size: tuple[int, int] = (12, 10)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "v"
    (folder / "sub").mkdir(parents=True)
    (folder / "f").write_text("x")
    (folder / "sub" / "g").write_text("y")
    return folder


def test_train_fresh_never_deletes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    folder = user_folder(tmp_path)
    before = snapshot(folder)
    code, text = run("train", "--fresh", "--out", str(folder), "--sd", "/nope")
    assert code == 1 and "--sd needs --clip" in text
    code, text = run("train", "--fresh", "--out", str(folder), "--base-steps", "0")
    assert code == 1 and "not a run folder mor-edge made" in text
    assert snapshot(folder) == before


def test_train_fresh_checks_everything_before_deleting_its_own_run(tmp_path: Path) -> None:
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / MARKER).write_text("training run\n")
    (run_folder / "log.jsonl").write_text("{}\n")
    before = snapshot(run_folder)
    code, text = run("train", "--fresh", "--out", str(run_folder), "--sd", "/nope", "--clip", "/nope")
    assert code == 1 and "Traceback" not in text
    assert snapshot(run_folder) == before  # the failed model load came before the deletion


def test_folder_mode_refuses_to_write_into_its_input(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    picture(src / "a.png")
    before = snapshot(src)
    for dst in (src, src / "sub", src / "sub" / ".." / "sub"):
        code, text = run("upscale", str(src), str(dst), *FAST)
        assert code == 1 and "is the input folder or inside it" in text, text
    assert snapshot(src) == before


def test_folder_mode_refuses_name_collisions_up_front(tmp_path: Path) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    picture(src / "a.jpg")
    picture(src / "a.png", seed=1)
    picture(src / "b.png", seed=2)
    code, text = run("upscale", str(src), str(dst), *FAST)
    assert code == 1 and "a.jpg and a.png -> a.png" in text
    assert list(dst.iterdir()) == []  # refused before any work


def test_a_file_is_never_upscaled_onto_itself(tmp_path: Path) -> None:
    src = picture(tmp_path / "a.png")
    before = src.read_bytes()
    code, text = run("upscale", str(src), str(tmp_path / "." / "a.png"), *FAST)
    assert code == 1 and "is the input file" in text
    assert src.read_bytes() == before


def test_force_replaces_only_folders_mor_edge_made(tmp_path: Path) -> None:
    folder = user_folder(tmp_path)
    before = snapshot(folder)
    with pytest.raises(UserError, match="not a folder mor-edge made"), atomic_folder(folder, force=True):
        pytest.fail("must not start")
    assert snapshot(folder) == before
    with atomic_folder(tmp_path / "ours", kind="artifact") as tmp:
        (tmp / "x").write_text("1")
    with atomic_folder(tmp_path / "ours", force=True, kind="artifact") as tmp:
        (tmp / "x").write_text("2")
    assert (tmp_path / "ours" / "x").read_text() == "2"
    assert (tmp_path / "ours" / MARKER).read_text() == "artifact\n"


def test_one_writer_per_destination(tmp_path: Path) -> None:
    out = tmp_path / "art"
    holder = subprocess.Popen(["sleep", "60"])  # another live process holds the destination
    try:
        (tmp_path / ".art.lock").write_text(str(holder.pid))
        refused = pytest.raises(UserError, match=f"another mor-edge process \\(pid {holder.pid}\\)")
        with refused, atomic_folder(out):
            pytest.fail("must not start")
        assert not out.exists() and (tmp_path / ".art.lock").read_text() == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / ".art.lock").unlink()
    with claim(out), claim(out), atomic_folder(out) as tmp:  # this process's own claim is held on
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1" and not (tmp_path / ".art.lock").exists()


def test_a_destination_that_appears_meanwhile_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "art"
    with pytest.raises(UserError, match="appeared while this ran"), atomic_folder(out) as tmp:
        (tmp / "mine").write_text("new")
        out.mkdir()
        (out / "theirs").write_text("first")
    assert snapshot(out) == {"theirs": hashlib.sha256(b"first").hexdigest()}
    assert not any(p.name.startswith(".art.tmp") for p in tmp_path.iterdir())


def test_leftovers_of_killed_writers_are_cleaned_up(tmp_path: Path) -> None:
    pid = dead_pid()
    (tmp_path / f".art.tmp-{pid}").mkdir()
    (tmp_path / f".art.scratch-{pid}-abc123").mkdir()
    (tmp_path / ".art.lock").write_text(str(pid))
    (tmp_path / f".mor-edge-{pid}-x1y2.tmp").write_bytes(b"half a png")
    keep = tmp_path / f".art.tmp-{os.getpid()}x"  # not ours to judge
    keep.mkdir()
    with atomic_folder(tmp_path / "art") as tmp:
        (tmp / "x").write_text("1")
    code, text = run("upscale", str(picture(tmp_path / "a.png")), str(tmp_path / "b.png"), *FAST)
    assert code == 0, text
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"art", "a.png", "b.png", keep.name}


def test_usage_errors_exit_1_and_a_long_valid_name_is_written(tmp_path: Path) -> None:
    code, text = run("upscale", "--no-such-option")
    assert code == 1 and "No such option" in text
    name = "n" * 246 + ".png"  # 250 bytes: the temporary name must fit too
    code, text = run("upscale", str(picture(tmp_path / "a.png")), str(tmp_path / name), *FAST)
    assert code == 0, text
    assert Image.open(tmp_path / name).size == (48, 40)
    code, text = run("upscale", str(tmp_path / "a.png"), str(tmp_path / ("n" * 300 + ".png")), *FAST)
    assert code == 1 and "file name too long" in text


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_interrupted_upscale_leaves_no_temporary_file(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    src = picture(tmp_path / "in.png", size=(160, 120))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mor_edge.cli",
            "upscale",
            str(src),
            str(tmp_path / "out.png"),
            "--tile",
            "32",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a test worker may have inherited SIGINT ignored, and a child
        # started with it ignored keeps ignoring it (seen: exit 0 after Ctrl-C).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):  # writing has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"interrupted ({sig.name})" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def _file_size_limit(limit: int) -> None:
    """In the child: files may not grow beyond `limit` bytes; writes past it fail with EFBIG
    (SIGXFSZ ignored), as a full disk fails them with ENOSPC."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("suffix", [".png", ".tif"])  # PNG is streamed in bands; TIFF is written whole
def test_a_write_that_fails_midway_is_one_line_and_leaves_nothing(tmp_path: Path, suffix: str) -> None:
    src = picture(tmp_path / "in.png", size=(96, 64))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "mor_edge.cli", "upscale", str(src), str(out / f"o{suffix}"), *FAST],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: _file_size_limit(20_000),  # the output is ~300 KB
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {out / f'o{suffix}'}: cannot write (File too large)"], proc.stderr
    assert list(out.iterdir()) == []


def test_a_multi_frame_input_says_only_its_first_frame_is_upscaled(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 8), colour) for colour in ((200, 0, 0), (0, 200, 0))]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    result = CliRunner().invoke(
        main, ["upscale", str(tmp_path / "pages.tif"), str(tmp_path / "o.png"), *FAST]
    )
    assert result.exit_code == 0, result.output
    assert "has 2 frames; the first is upscaled" in result.output
    assert Image.open(tmp_path / "o.png").size == (40, 32)


def test_a_racing_export_fails_and_an_interrupted_one_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "art"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mor_edge.cli",
            "export",
            "--routing",
            "dynamic",
            "--out",
            str(out),
            "--skip-parity",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not any(p.name.startswith(".art.tmp-") for p in tmp_path.iterdir()):  # the export has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    code, text = run("export", "--routing", "static", "--out", str(out), "--skip-parity")  # a racer
    assert code == 1 and f"another mor-edge process (pid {proc.pid}) is writing" in text, text
    assert proc.poll() is None, "the racer must not have disturbed the first export"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no artifact, temporary folder, scratch or lock


def test_interrupted_calibrate_leaves_nothing_and_holds_its_destination(tmp_path: Path) -> None:
    out = tmp_path / "cal"
    cmd = [sys.executable, "-m", "mor_edge.cli", "calibrate", "--samples", "16", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / ".cal.lock").exists():  # claimed before the model loads
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    code, text = run("calibrate", "--samples", "16", "--out", str(out))
    assert code == 1 and "another mor-edge process" in text, text
    time.sleep(1.0)  # into the sampling
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    assert "interrupted (SIGHUP)" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_weights_get_the_umask_mode_not_a_private_one(
    tmp_path: Path, tiny_model: MoRSR, umask: int
) -> None:
    """safetensors' writer makes its files 0600; a saved model, optimizer state or calibration
    set would then be unreadable to the user's group, unlike every other file written."""
    old = os.umask(umask)
    try:
        tiny_model.save_pretrained(tmp_path / "model")
        write_weights_file(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
    finally:
        os.umask(old)
    for path in (tmp_path / "model" / "model.safetensors", tmp_path / "t.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
