"""Write a folder atomically: claim the destination, build it under a temporary sibling name,
rename it into place.

A failed or interrupted write never leaves a half-written folder, and a refused or failed
overwrite leaves the old one untouched (it is removed only after the new one is in place).
Every folder made here holds a `MARKER` file: `--force` replaces only folders that have one
(or empty ones), so a typo in `--out` cannot delete a user's own folder. A `.NAME.lock` file
claims the destination for one process; a second writer fails at once instead of overwriting
the first. What a killed process left (`.NAME.tmp-PID`, `.NAME.old-PID`,
`.NAME.scratch-PID-*`, a `.NAME.lock` naming a PID that is gone) is removed by the next write
into the same place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

MARKER = ".mor-edge"


def honour_umask(path: Path | str) -> None:
    """Give a file the mode a plain `open` gives: `mkstemp` and safetensors' writer make files
    private (0600), which leaves a model or artifact unreadable to the user's group."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def made_by_us(folder: Path) -> bool:
    """True for a folder mor-edge wrote (it holds `MARKER`) or an empty one."""
    return (folder / MARKER).is_file() or (folder.is_dir() and not any(folder.iterdir()))


def mark(folder: Path, kind: str) -> None:
    """Record that mor-edge made `folder` (an artifact, calibration set, run or model)."""
    (folder / MARKER).write_text(f"{kind}\n")


def check_destination(out: Path, force: bool) -> None:
    """Refuse before any work: an existing `out` without --force, or one mor-edge did not
    make; a missing parent folder."""
    if out.exists() or out.is_symlink():
        if not force:
            raise UserError(f"{out} exists; pass --force to replace it")
        if out.is_symlink() or not out.is_dir() or not made_by_us(out):
            raise UserError(
                f"{out} is not a folder mor-edge made (no {MARKER} file in it); --force replaces "
                "only those: delete it yourself or choose another --out"
            )
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: folder does not exist")
    probe = out.parent / f".{out.name}.probe-{os.getpid()}"
    try:  # writable, and the names this module makes there fit: before any work is done
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{out}: cannot write there ({exc.strerror})") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(out: Path) -> None:
    """Remove what killed writers into `out` left beside it (their PID no longer runs)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old|scratch|probe)-(\d+)(-[\w.]+)?$")
    with contextlib.suppress(OSError):
        for path in out.parent.iterdir():
            m = pattern.match(path.name)
            if m and int(m.group(2)) != os.getpid() and not _alive(int(m.group(2))):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


TEMP_PREFIX = ".mor-edge-"  # + PID + random + ".tmp": a file being written by that process


_swept: set[Path] = set()  # folders already cleaned by this process


def remove_stale_temp_files(folder: Path) -> None:
    """Remove temporary output files in `folder` whose writer no longer runs; once per folder
    and process (folder mode writes many files into one folder)."""
    if folder in _swept:
        return
    _swept.add(folder)
    pattern = re.compile(rf"{re.escape(TEMP_PREFIX)}(\d+)-\w+\.tmp$")
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            m = pattern.match(path.name)
            if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def claim(out: Path) -> Iterator[None]:
    """Hold `.NAME.lock` (it holds our PID) for the duration of the write; a lock whose
    process is gone is taken over, one this process holds is held on (a command claims its
    destination before long work, and the final write claims it again)."""
    lock = out.parent / f".{out.name}.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        holder = lock.read_text().strip() if lock.is_file() else ""
        if holder == str(os.getpid()):
            yield
            return
        if holder.isdigit() and not _alive(int(holder)):
            lock.unlink(missing_ok=True)  # its writer was killed
            with claim(out):
                yield
            return
        raise UserError(
            f"another mor-edge process (pid {holder or '?'}) is writing {out}; wait for it"
        ) from None
    except OSError as exc:
        raise UserError(f"{out}: cannot write there ({exc.strerror})") from None
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(out: str | Path, force: bool = False, kind: str = "folder") -> Iterator[Path]:
    """Yields an empty temporary folder; on success it replaces `out` (marked as `kind`)."""
    out = Path(out)
    check_destination(out, force)  # refused before any lock or scratch is made
    clean_leftovers(out)
    with claim(out):
        check_destination(out, force)  # again, now that no other writer can start
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            yield tmp
            mark(tmp, kind)
            _put_in_place(tmp, out, force)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"{out}: could not write ({exc.strerror or exc})") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _put_in_place(tmp: Path, out: Path, force: bool) -> None:
    if force and out.exists():
        check_destination(out, force)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
        return
    try:  # rename never replaces a non-empty folder: nothing written meanwhile is lost
        os.rename(tmp, out)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise UserError(f"{out} appeared while this ran; nothing was replaced") from None
        raise
