"""Write a folder atomically: build it under a temporary sibling name, rename it into place.

A failed or interrupted write never leaves a half-written folder, and a refused or failed
overwrite leaves the old one untouched (it is removed only after the new one is in place).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError


def check_destination(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: folder does not exist")


@contextlib.contextmanager
def atomic_folder(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yields an empty temporary folder; on success it replaces `out`."""
    out = Path(out)
    check_destination(out, force)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
