"""The wheel holds one namespace: mor_edge plus export/, runtimes/, calib/ mapped into it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_top_level_folders_into_mor_edge(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mor_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "mor_edge/__init__.py",
        "mor_edge/cli.py",
        "mor_edge/export/__init__.py",
        "mor_edge/runtimes/__init__.py",
        "mor_edge/calib/__init__.py",
    ):
        assert required in names, required
    assert not any(n.startswith(("export/", "runtimes/", "calib/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mor-edge = mor_edge.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
