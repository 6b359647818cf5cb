"""Find the image files under a folder: recursive, sorted, symlink-safe, hidden files skipped.

Symlinked folders are followed (photo libraries often link albums in), but each real folder is visited once,
keyed by (st_dev, st_ino), so a link back to an ancestor cannot loop and a folder linked twice is not indexed
twice. The first path in sorted walk order wins, so the result does not depend on the file system's order.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import DatasetError
from retrieval.index.imageio import IMAGE_EXTENSIONS, is_image_path, sniff_image


@dataclass(frozen=True)
class FileEntry:
    """One image file. `rel_path` uses "/" and is relative to the walked root (it is the image id)."""

    rel_path: str
    abs_path: Path
    size: int
    mtime_ns: int


def check_images_root(root: str | os.PathLike[str]) -> Path:
    """The root as an absolute Path, or DatasetError naming it (missing / not a folder)."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"folder {str(path)!r} does not exist; pass an existing folder to build-index")
    if not path.is_dir():
        raise DatasetError(f"{str(path)!r} is not a folder; pass a folder of images to build-index")
    return path.absolute()


def walk_images(root: str | os.PathLike[str]) -> list[FileEntry]:
    """All image files under `root`, sorted by rel_path: by extension (IMAGE_EXTENSIONS), or by content when the
    name says nothing (its first bytes are an image signature: `imageio.sniff_image`).

    Skipped silently: names starting with "." (hidden files/folders, .DS_Store, AppleDouble "._x.jpg"),
    other files, broken symlinks and folders that cannot be listed.
    """
    base = check_images_root(root)
    seen_dirs: set[tuple[int, int]] = set()
    out: list[FileEntry] = []
    root_stat = base.stat()
    seen_dirs.add((root_stat.st_dev, root_stat.st_ino))
    stack: list[tuple[str, str]] = [(str(base), "")]  # (absolute dir, rel prefix)
    while stack:
        dir_path, prefix = stack.pop()
        try:
            with os.scandir(dir_path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:  # broken symlink, vanished file, permission
                continue
            rel = prefix + name
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key not in seen_dirs:
                    seen_dirs.add(key)
                    subdirs.append((entry.path, rel + "/"))
            elif stat.S_ISREG(st.st_mode) and (is_image_path(name) or sniff_image(entry.path)):
                out.append(FileEntry(rel, Path(entry.path), st.st_size, st.st_mtime_ns))
        stack.extend(reversed(subdirs))  # depth-first in sorted order
    out.sort(key=lambda f: f.rel_path)
    return out


__all__ = ["FileEntry", "IMAGE_EXTENSIONS", "check_images_root", "walk_images"]
