"""The artifact manifest: what an export folder holds, and the checks made before using one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from mor_edge.errors import UserError
from mor_edge.model import model_fingerprint

__all__ = ["model_fingerprint"]

SCHEMA_VERSION = 1
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


class Artifact:
    """A verified export folder: manifest plus files whose hashes match."""

    def __init__(self, folder: str | Path, verify: bool = True) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST_NAME
        if not self.folder.is_dir():
            raise ArtifactError(f"{self.folder}: no such artifact folder")
        if not path.is_file():
            raise ArtifactError(f"{self.folder}: not an artifact ({MANIFEST_NAME} is missing)")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable manifest ({exc})") from None
        version = self.manifest.get("schema_version") if isinstance(self.manifest, dict) else None
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{path}: manifest schema version {version!r}, this mor-edge reads version {SCHEMA_VERSION}"
            )
        if verify:
            self.verify()

    def verify(self) -> None:
        files = self.manifest.get("files", {})
        for stage, entry in self.manifest.get("stages", {}).items():
            for variant in entry.get("variants", []):
                name = variant["file"]
                if name not in files and not any(f.startswith(name + "/") for f in files):
                    raise ArtifactError(f"{self.folder}: stage {stage} file {variant['file']} is not listed")
        for name in ("router", "encoder", "unet", "decoder"):
            if name not in self.manifest.get("stages", {}):
                raise ArtifactError(f"{self.folder}: manifest has no {name} stage")
        for rel, digest in files.items():
            path = self.folder / rel
            if not path.is_file():
                raise ArtifactError(f"{self.folder}: file {rel} is missing")
            if sha256_file(path) != digest:
                raise ArtifactError(f"{self.folder}: file {rel} does not match its sha256 in the manifest")

    @property
    def target(self) -> str:
        return str(self.manifest["target"])

    @property
    def precision(self) -> str:
        return str(self.manifest["precision"])

    @property
    def routing(self) -> str:
        return str(self.manifest["routing"]["mode"])

    @property
    def bucket_centres(self) -> np.ndarray:
        return np.asarray(self.manifest["routing"]["buckets"], dtype=np.float32)

    def stage(self, name: str) -> dict[str, Any]:
        return dict(self.manifest["stages"][name])

    def stage_file(self, name: str, bucket: int | None = None) -> Path:
        """The file that runs `name` (for `bucket` in static mode)."""
        entry = self.stage(name)
        index = entry["bucket_variant"][bucket] if bucket is not None and "bucket_variant" in entry else 0
        return self.folder / entry["variants"][index]["file"]
