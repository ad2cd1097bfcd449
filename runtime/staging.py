"""Writing a bundle without losing anything: staging, one writer at a time, atomic replacement.

A bundle is written into a staging folder, a sibling `.NAME.staging-*` of its destination (same
file system), and moved into place only when complete:

- **Atomic for readers.** An existing bundle is exchanged with the staged one in one step
  (Linux `renameat2(RENAME_EXCHANGE)`), so `NAME` is always a whole bundle, old or new; a
  reader that was part-way through the old one notices the swap and reads again
  (`bundle.consistent_read`). Where the exchange is not available, two renames.
- **One writer at a time.** The replacement runs under an exclusive `flock` on the parent
  folder, so two compiles into one output each land whole, the later one last.
- **Nothing stray.** On any exception (KeyboardInterrupt, and SIGTERM, which the CLI raises
  as an exception) the staging folder is removed. A writer killed outright (SIGKILL, power
  loss) cannot clean up: every staging folder is `flock`ed by its writer while it lives, and
  the next write to that output removes the ones nobody holds.
- **Nothing of the user's replaced.** An existing destination is replaced only if it is an
  empty folder or an edgec bundle (by its manifest's format marker).

Needs only the standard library (Linux or macOS: `fcntl`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgec.core.errors import BundleError
from edgec.runtime.bundle import MANIFEST, marked

_RENAME_EXCHANGE = 2  # linux/fs.h


def is_bundle(folder: Path) -> bool:
    """An edgec bundle, by its manifest's marker: a folder that merely holds some
    manifest.json (a web app's, a browser extension's) is not one."""
    try:
        return marked(json.loads((folder / MANIFEST).read_text()))
    except (OSError, ValueError):
        return False


def check_destination(dest: Path) -> None:
    """Can a bundle be written to `dest`? BundleError if it holds something of the user's or
    no folder on its way can be written (checked before a long compile, and again at the end)."""
    if dest.is_symlink() or (
        dest.exists() and not (dest.is_dir() and (is_bundle(dest) or not any(dest.iterdir())))
    ):
        raise BundleError(
            f"output '{dest}' exists and is not an edgec bundle; choose another output path"
        )
    ancestor = dest.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise BundleError(
            f"cannot write the bundle '{dest}': '{ancestor}' is not a writable folder"
        )


@contextlib.contextmanager
def _locked(folder: Path, how: int = fcntl.LOCK_EX) -> Iterator[int]:
    """Hold `flock(how)` on `folder` (a directory's own descriptor); yields the descriptor."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, how)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _held(folder: Path) -> bool:
    """Does a live process hold the lock on this staging folder?"""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return True  # not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def sweep_stale(dest: Path) -> list[Path]:
    """Remove the staging (and older edgec's `.old-*`) folders of `dest` that no live writer
    holds; returns what was removed. Call with the parent's lock held."""
    removed = []
    for pattern in (f".{dest.name}.staging-*", f".{dest.name}.old-*"):
        for folder in dest.parent.glob(pattern):
            if folder.is_dir() and not folder.is_symlink() and not _held(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    # the process's own symbols (libc's among them): no library search, no subprocess
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def _replace(stage: Path, dest: Path) -> None:
    """Put `stage` at `dest`; an existing `dest` ends up at `stage` (removed by the caller)."""
    if not dest.exists():
        os.rename(stage, dest)
        return
    if _exchange(stage, dest):
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    os.rename(dest, aside / "bundle")
    os.rename(stage, dest)
    os.rename(aside / "bundle", stage)
    aside.rmdir()


@contextlib.contextmanager
def staged_bundle(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `dest` atomically.

    On any exception, KeyboardInterrupt included, the staging folder is removed and `dest`
    is left as it was. See the module docstring for locking and the stale-folder sweep.
    """
    dest = Path(dest)
    check_destination(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent):
        sweep_stale(dest)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
        own = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(own, fcntl.LOCK_EX)  # taken before the parent's lock is let go
    try:
        yield stage
        with _locked(dest.parent):
            check_destination(dest)
            _replace(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # the old bundle, or the unfinished one
        os.close(own)
