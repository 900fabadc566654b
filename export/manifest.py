"""The artifact manifest: what an export folder holds, and the checks made before using one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from mor_edge.errors import UserError
from mor_edge.stage_contract import STAGES, StageSpec

from .manifest_schema import SCHEMA_VERSION, Manifest, validate_manifest

__all__ = ["SCHEMA_VERSION", "Artifact", "ArtifactError", "Manifest"]

MANIFEST_NAME = "manifest.json"


class ArtifactError(UserError):
    """An artifact folder that is missing, from another schema, incomplete or altered."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def size_bytes(path: Path) -> int:
    """Bytes of a file, or of everything under a folder (a Core ML package)."""
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Hash every file in `folder` into the manifest and write it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    manifest["files"] = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def confined(folder: Path, rel: str) -> Path:
    """`folder/rel` if it is a regular file or folder inside `folder` reached without symlinks
    (the schema already refused absolute names and `..`); nothing else is ever opened."""
    path = folder
    for part in rel.split("/"):
        path = path / part
        if path.is_symlink():
            raise ArtifactError(f"{folder}: {rel} goes through a symbolic link; artifacts hold plain files")
    if not path.exists():
        raise ArtifactError(f"{folder}: file {rel} is missing")
    if not (path.is_file() or path.is_dir()):
        raise ArtifactError(f"{folder}: {rel} is not a regular file")
    return path


class Artifact:
    """A verified export folder: a manifest that passes its schema, plus files inside the
    folder whose hashes match."""

    def __init__(self, folder: str | Path, verify: bool = True) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST_NAME
        if not self.folder.is_dir():
            raise ArtifactError(f"{self.folder}: no such artifact folder")
        if not path.is_file() or path.is_symlink():
            raise ArtifactError(f"{self.folder}: not an artifact ({MANIFEST_NAME} is missing)")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path}: {path.stat().st_size} bytes, too large for a manifest")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable manifest ({exc})") from None
        except RecursionError:
            raise ArtifactError(f"{path}: unreadable manifest (nested too deeply)") from None
        version = self.manifest.get("schema_version") if isinstance(self.manifest, dict) else None
        if type(version) is int and version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{path}: manifest schema version {version!r}, this mor-edge reads version {SCHEMA_VERSION}"
            )
        self.checked: Manifest = validate_manifest(self.manifest, str(path))
        if verify:
            self.verify()

    def verify(self) -> None:
        """Every listed file is inside the folder and matches its hash."""
        for rel, digest in self.checked.files.items():
            path = confined(self.folder, rel)
            if not path.is_file():
                raise ArtifactError(f"{self.folder}: {rel} is not a regular file")
            if sha256_file(path) != digest:
                raise ArtifactError(f"{self.folder}: file {rel} does not match its sha256 in the manifest")

    @property
    def target(self) -> str:
        return self.checked.target

    @property
    def precision(self) -> str:
        return self.checked.precision

    @property
    def routing(self) -> str:
        return self.checked.routing.mode

    @property
    def scale(self) -> int:
        return self.checked.scale

    @property
    def tile_margin(self) -> int:
        """SR pixels at a tile's border to leave out of the blend (the colour step's reach)."""
        return self.checked.colour.tile_margin if self.checked.colour else 0

    @property
    def batch(self) -> int:
        """Tiles per call of the image stages (the schema checked that they agree)."""
        return self.checked.stages["encoder"].inputs[0].shape[0]

    @property
    def bucket_centres(self) -> np.ndarray:
        return np.asarray(self.checked.routing.buckets or [], dtype=np.float32)

    @property
    def specs(self) -> dict[str, StageSpec]:
        """Each stage's inputs and outputs as the manifest records them."""
        stages = self.checked.stages
        return {
            name: StageSpec.from_entry(name, stages[name].inputs, stages[name].outputs) for name in STAGES
        }

    def summary(self) -> dict[str, Any]:
        """What `mor-edge info ARTIFACT` shows: target, precision, routing, model, tile, and
        per stage its precision, variants and tensors (the files were verified on opening)."""
        m = self.checked
        files = [confined(self.folder, rel) for rel in m.files]
        return {
            "folder": str(self.folder),
            "target": m.target,
            "precision": m.precision,
            "routing": m.routing.mode,
            "buckets": len(m.routing.buckets or []),
            "model": m.model.model_dump(include={"name", "label", "hash", "source"}),
            "scale": m.scale,
            "tile": self.specs["router"].inputs[0].shape[2],
            "batch": self.batch,
            "stages": {
                name: {
                    "precision": m.stages[name].precision,
                    "variants": len(m.stages[name].variants),
                    "inputs": [f"{t.name} {'x'.join(map(str, t.shape))}" for t in spec.inputs],
                    "outputs": [f"{t.name} {'x'.join(map(str, t.shape))}" for t in spec.outputs],
                }
                for name, spec in self.specs.items()
            },
            "files": len(files),
            "bytes": sum(size_bytes(p) for p in files),
        }

    def stage_file(self, name: str, bucket: int | None = None) -> tuple[Path, str | None]:
        """The file that runs `name` (for `bucket` in static mode), confined to the folder, and
        the function in it to load (Core ML multifunction packages; None elsewhere)."""
        entry = self.checked.stages[name]
        index = entry.bucket_variant[bucket] if bucket is not None and entry.bucket_variant else 0
        variant = entry.variants[index]
        return confined(self.folder, variant.file), variant.function
