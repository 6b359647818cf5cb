"""Locations and settings, resolved in one place (env var first, then a sane default)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(__file__).resolve().parent

#: The env var that points tests and the demo at the course data (folder in the course layout).
COURSE_DATA_ENV = "RETRIEVAL_COURSE_DATA"
#: Where caches (embeddings, unpacked models) go. Never inside ../shared (read-only in CI).
CACHE_DIR_ENV = "RETRIEVAL_CACHE_DIR"

DEFAULT_MODEL_DIR = PACKAGE_DIR / "default_model"
#: Model folders shipped in the package, usable by name with --model (a real folder of that name wins).
PACKAGED_MODELS = {"default": DEFAULT_MODEL_DIR, "light": PACKAGE_DIR / "light_model"}

#: Camera RAW files: decoded with rawpy when the `raw` extra is installed (`pip install 'retrieval[raw]'`).
RAW_EXTENSIONS: frozenset[str] = frozenset({".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng",
                                            ".orf", ".rw2", ".raf", ".pef", ".srw", ".x3f", ".3fr", ".erf", ".kdc",
                                            ".mrw", ".rwl", ".iiq"})
#: Files with these extensions (any case) are images to index and to read from course folders; files with other
#: names are still indexed when their first bytes are an image signature (`index.imageio.sniff_image`).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".j2k", ".j2c", ".jpx", ".jpf", ".avif", ".heic", ".heif", ".hif",
    ".qoi", ".tga",
}) | RAW_EXTENSIONS

DISCLAIMER = "This image is unavailable in your country in compliance with local laws"


def course_data_dir() -> Path:
    """The course-train folder: $RETRIEVAL_COURSE_DATA, else ../shared/data/course-train next to the repo."""
    env = os.environ.get(COURSE_DATA_ENV)
    if env:
        return Path(env).expanduser()
    return (REPO_ROOT.parent / "shared" / "data" / "course-train").resolve()


def cache_dir() -> Path:
    """$RETRIEVAL_CACHE_DIR, else $XDG_CACHE_HOME/retrieval, else ~/.cache/retrieval (created on demand)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "retrieval"
    path.mkdir(parents=True, exist_ok=True)
    return path
