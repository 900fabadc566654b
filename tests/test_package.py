"""The package's shape: one namespace in the wheel, a runtime path without PyTorch, no import cycles."""

from __future__ import annotations

import ast
import os
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
        "mor_edge/cli/__init__.py",
        "mor_edge/cli/__main__.py",
        "mor_edge/stage_contract.py",
        "mor_edge/runtimes/registry.py",
        "mor_edge/export/__init__.py",
        "mor_edge/runtimes/__init__.py",
        "mor_edge/calib/__init__.py",
    ):
        assert required in names, required
    assert not any(n.startswith(("export/", "runtimes/", "calib/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mor-edge = mor_edge.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


RUNTIME_PATH = [
    "mor_edge",
    "mor_edge.cli",
    "mor_edge.upscale",
    "mor_edge.tiling",
    "mor_edge.image_io",
    "mor_edge.stage_contract",
    "mor_edge.export.manifest",
    "mor_edge.runtimes.registry",
    "mor_edge.runtimes.ort_runtime",
    "mor_edge.runtimes.openvino_runtime",
    "mor_edge.runtimes.coreml_runtime",
    "mor_edge.runtimes.tensorrt_runtime",
    "mor_edge.runtimes.latency",
]


def test_the_runtime_path_imports_no_pytorch() -> None:
    """What `upscale --artifact`, `bench` and `info ARTIFACT` import loads no torch, diffusers
    or transformers (a runtime-only install has none; `make test` also installs one)."""
    code = (
        f"import importlib, sys\nfor m in {RUNTIME_PATH!r}: importlib.import_module(m)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _module_imports() -> dict[str, set[str]]:
    """Package module -> the package modules it imports at module level (not in functions)."""
    paths = [
        Path(folder) / name
        for folder, _, names in os.walk(ROOT / "mor_edge", followlinks=True)  # export/ etc. are links
        for name in names
        if name.endswith(".py")
    ]
    files = {"mor_edge." + ".".join(p.relative_to(ROOT / "mor_edge").with_suffix("").parts): p for p in paths}
    names = {m.removesuffix(".__init__"): p for m, p in files.items()}
    graph: dict[str, set[str]] = {}
    for module, path in names.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - node.level + 1], base]).rstrip(".")
                for target in (base, *(f"{base}.{a.name}" for a in node.names)):
                    if target in names:
                        found.add(target)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in names}
        graph[module] = found - {module, "mor_edge"}
    return graph


def test_no_import_cycles() -> None:
    graph = _module_imports()
    assert "mor_edge.runtimes.base" in graph and graph["mor_edge.runtimes.registry"] >= {
        "mor_edge.runtimes.base"
    }
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(graph[module]):
            assert state.get(nxt) != 1, " -> ".join([*path, module, nxt])
            if nxt not in state:
                visit(nxt, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
