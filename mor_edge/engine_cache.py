"""`upscale`'s default engine: the model's own export, made once and kept in the user's cache.

The runtimes run the model's graphs faster than the PyTorch reference (measured in the
README), so a user who names no `--artifact` gets an export of the model they asked for: made
on first use, parity-checked against the reference before it is used, and found again by a
hash of the model's files and the package version (a changed model or a new mor-edge makes a
new one). A cache hit reads and hashes the model's files and loads the
artifact: no PyTorch import, which is seconds of a short run. Where it cannot be made or run
(no runtime installed, another process building it, a failed parity gate) the reference runs
instead and says why.

The cache is `$MOR_EDGE_CACHE`, else `$XDG_CACHE_HOME/mor-edge`, else `~/.cache/mor-edge`;
deleting it is always safe. Entries made by older mor-edge versions, which this one never
uses, are removed when a new entry is made. Which export: OpenVINO in bfloat16 where
openvino is installed and the CPU computes bfloat16 natively (AVX512_BF16 or AMX: the real
upscale of a photo in 0.6-0.7x the time of ONNX Runtime FP32, README), else ONNX Runtime
FP32; if the first fails its parity gates, the next is tried. `MOR_EDGE_ENGINE=reference`
makes the reference the default, `MOR_EDGE_ENGINE=onnxruntime` the ONNX Runtime FP32 export.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mor_edge

from .atomic import made_by_us
from .config import CONFIG_NAME, WEIGHTS_NAME, MoRSRConfig
from .errors import UserError

if TYPE_CHECKING:
    from .model import MoRSR

CACHE_ENV = "MOR_EDGE_CACHE"
ENGINE_ENV = "MOR_EDGE_ENGINE"
PARITY_SAMPLES = 2
# An entry's name: model name, hash, kind tag, version; a failure record or staging folder
# adds a suffix.
ENTRY_NAME = re.compile(
    r"^.+-[0-9a-f]{16}-[a-z0-9]+-[a-z]+-[a-z0-9]+-v(\d+(?:\.\d+)*)(\.failed|\.unchecked)?$"
)


@dataclass(frozen=True)
class CachedKind:
    """Which export the cache holds, and the module that must be importable to run it."""

    target: str
    precision: str
    routing: str
    runtime_module: str

    @property
    def tag(self) -> str:
        return f"{self.target}-{self.routing}-{self.precision}"


ONNX_FP32 = CachedKind("onnx", "fp32", "static", "onnxruntime")
OPENVINO_BF16 = CachedKind("openvino", "bf16", "static", "openvino")


@dataclass(frozen=True)
class CacheResult:
    """The cached artifact's folder, or None and why the reference runs instead."""

    folder: Path | None
    reason: str = ""


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mor-edge"


def _engine_env() -> str:
    return os.environ.get(ENGINE_ENV, "").strip().lower()


def reference_is_default() -> bool:
    return _engine_env() == "reference"


def engine_kinds() -> list[CachedKind]:
    """The exports to try, fastest first: OpenVINO bf16 where this CPU has bfloat16 (and
    openvino is installed), then ONNX Runtime FP32."""
    if _engine_env() != "onnxruntime" and importlib.util.find_spec("openvino") is not None:
        from mor_edge.runtimes.openvino_runtime import cpu_has_bf16

        if cpu_has_bf16():
            return [OPENVINO_BF16, ONNX_FP32]
    return [ONNX_FP32]


def model_folder(model_dir: str | None) -> Path:
    return Path(model_dir) if model_dir is not None else Path(mor_edge.__file__).parent / "builtin_model"


def cache_folder(model_dir: str | None, kind: CachedKind, denoise: float | None = None) -> Path | None:
    """The cache folder of a model folder's export: named by the model's name and a hash of
    its files (and of `denoise` where it overrides the config's), read without PyTorch (a cache
    hit never imports it); None where the folder has no config and weights to hash."""
    folder = model_folder(model_dir)
    config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    try:
        digest = hashlib.sha256(config.read_bytes())
        with weights.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        settings = json.loads(config.read_text())
        name = str(settings.get("name", "model"))
        if denoise is not None and denoise != settings.get("denoise", MoRSRConfig.denoise):
            digest.update(f"denoise={float(denoise)!r}".encode())
    except (OSError, ValueError, AttributeError):
        return None  # loading the model reports what is wrong with it
    if not name.replace("-", "").replace("_", "").isalnum():
        name = "model"
    return cache_root() / f"{name}-{digest.hexdigest()[:16]}-{kind.tag}-v{mor_edge.__version__}"


def _usable(folder: Path) -> bool:
    """The folder is a complete artifact (hashes checked); a broken one made by mor-edge is
    removed so that it is rebuilt."""
    from mor_edge.export.manifest import Artifact, ArtifactError

    try:
        Artifact(folder)
        return True
    except (ArtifactError, UserError, OSError):
        if folder.is_dir() and made_by_us(folder):
            shutil.rmtree(folder, ignore_errors=True)
        return False


def lookup(model_dir: str | None, kind: CachedKind, denoise: float | None = None) -> Path | None:
    """The cached export of the model in `model_dir` (None: the built-in model), with its
    config's `denoise` or the one given, if there is a sound one and its runtime is installed.
    No PyTorch."""
    folder = cache_folder(model_dir, kind, denoise)
    if folder is None or importlib.util.find_spec(kind.runtime_module) is None:
        return None
    return folder if folder.is_dir() and _usable(folder) else None


def build(model: MoRSR, model_dir: str | None, kind: CachedKind, progress: bool = True) -> CacheResult:
    """Export `model` (loaded from `model_dir`) into the cache and parity-check it. A failed
    parity check is recorded beside the entry (`NAME.failed`), so that later runs go straight to
    the next kind instead of exporting again: the same model, version and gates fail the same
    way."""
    if importlib.util.find_spec(kind.runtime_module) is None:
        return CacheResult(None, f"{kind.runtime_module} is not installed")
    folder = cache_folder(model_dir, kind, model.config.denoise)
    if folder is None:
        return CacheResult(None, "the model has no weights file to key a cached export by")
    if folder.is_dir() and _usable(folder):
        return CacheResult(folder)
    failed = folder.parent / f"{folder.name}.failed"
    if failed.is_file():
        recorded = failed.read_text().strip()
        return CacheResult(None, f"{recorded}, when first made (delete {failed} to try again)")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return CacheResult(None, f"cannot create the cache folder {folder.parent} ({exc.strerror})")
    print(f"first run of this model: exporting it to {kind.tag} (once; kept in {folder})", file=sys.stderr)
    staging = folder.parent / f"{folder.name}.unchecked"
    source = "builtin" if model_dir is None else str(Path(model_dir).resolve())
    try:
        failures = _export_and_check(model, source, kind, staging, progress)
    except UserError as exc:  # another process building it, a full disk, ...
        return CacheResult(None, f"the cached export could not be made: {exc}")
    if failures:
        shutil.rmtree(staging, ignore_errors=True)
        reason = f"the cached export failed its parity check ({failures[0]})"
        with contextlib.suppress(OSError):  # unrecorded, it is only tried again next time
            failed.write_text(reason + "\n")
        return CacheResult(None, reason)
    try:
        staging.rename(folder)
    except OSError:  # another process put its own in place first: use that one
        shutil.rmtree(staging, ignore_errors=True)
        if not _usable(folder):
            return CacheResult(None, f"{folder} could not be put in place")
    prune_older_versions(folder.parent)
    return CacheResult(folder)


def _version(text: str) -> tuple[int, ...]:
    """The release numbers of a version string ("0.2.1", "0.3.0rc1" -> (0, 3, 0))."""
    release = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in release.group(0).split(".")) if release else ()


def prune_older_versions(root: Path) -> list[Path]:
    """Remove the entries (exports, failure records, staging folders) that older mor-edge
    versions made: this version never uses them, and each export is tens of MB. Newer
    versions' entries stay (another environment may share the cache), as does anything
    mor-edge did not make. Returns what was removed."""
    current = _version(mor_edge.__version__)
    removed = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        match = ENTRY_NAME.match(entry.name)
        if match is None or _version(match.group(1)) >= current:
            continue
        if entry.is_file() and match.group(2) == ".failed":
            entry.unlink(missing_ok=True)
        elif entry.is_dir() and not entry.is_symlink() and made_by_us(entry):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            continue
        removed.append(entry)
    if removed:
        print(
            f"removed {len(removed)} cached export(s) of older mor-edge versions from {root}", file=sys.stderr
        )
    return removed


def _export_and_check(
    model: MoRSR, source: str, kind: CachedKind, staging: Path, progress: bool
) -> list[str]:
    """Export into `staging` and run the parity gates on it; returns the gate failures."""
    from mor_edge.export.exporter import export
    from mor_edge.runtimes.parity import run_parity
    from mor_edge.runtimes.registry import load_runtime

    export(
        model,
        staging,
        target=kind.target,
        routing=kind.routing,
        precision=kind.precision,
        force=True,
        model_source=source,
        progress=progress,
    )
    report = run_parity(load_runtime(str(staging), None, None), model, samples=PARITY_SAMPLES)
    return list(report["failures"])
