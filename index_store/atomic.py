"""Atomic folder replacement, shared by the index store and the application's other folder artifacts.

`swap_in(tmp, folder)` puts a complete, fsynced temp folder in place of `folder`. On Linux the swap is one
`renameat2(RENAME_EXCHANGE)`: atomic. Elsewhere it is rename-aside (`.<name>.old-<pid>`) then rename-in; a reader
that runs in between finds the aside copy (`aside_copy`), and `clean_stale` restores or deletes what a crashed
writer left. Temp folders are named `.<name>.tmp-<pid>` so that `clean_stale` can tell dead writers' leftovers.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import glob
import os
import shutil
from pathlib import Path
from typing import Any

MANIFEST_HINT = "manifest.json"


def temp_sibling(folder: Path) -> Path:
    """The temp folder name this process writes `folder`'s replacement into."""
    return folder.parent / f".{folder.name}.tmp-{os.getpid()}"


def clean_stale(folder: str | os.PathLike[str], complete: str | None = MANIFEST_HINT) -> None:
    """Remove temp folders of dead writers; put back an aside copy if a writer died between its two renames."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return
    for path in folder.parent.glob(f".{glob.escape(folder.name)}.*-*"):
        kind, _, pid = path.name[len(folder.name) + 2 :].rpartition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not folder.exists() and _complete(path, complete):
            os.replace(path, folder)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _complete(path: Path, marker: str | None) -> bool:
    return path.is_dir() if marker is None else (path / marker).is_file()


def aside_copy(folder: Path, marker: str = MANIFEST_HINT) -> Path | None:
    """A complete `.name.old-<pid>` left while a writer is between its renames (non-Linux fallback only)."""
    if folder.exists() or not folder.parent.is_dir():
        return None
    copies = sorted(p for p in folder.parent.glob(f".{glob.escape(folder.name)}.old-*") if (p / marker).is_file())
    return copies[-1] if copies else None


def swap_in(tmp: Path, folder: Path) -> None:
    if not os.path.lexists(folder):
        os.rename(tmp, folder)
    elif _exchange(tmp, folder):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous index
    else:
        aside = folder.parent / f".{folder.name}.old-{os.getpid()}"
        os.rename(folder, aside)
        os.rename(tmp, folder)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(folder.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE). False if unsupported here."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    res = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def flush(fh: Any) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
