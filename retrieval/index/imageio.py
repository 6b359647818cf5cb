"""Decode any PIL-readable image file into an upright RGB picture, or fail with a short reason.

Why a module of its own: a user's photo folder holds CMYK JPEGs, 16-bit PNGs, palette GIFs, phone pictures
rotated by EXIF, half-copied files and the odd 30000x30000 "decompression bomb". The index build must take the
good ones, skip the rest and say why, so every failure here is one `ImageDecodeError` with a one-line reason.

Cost control: the pixel count is read from the header and checked against `max_megapixels` before any pixel is
decoded; JPEGs are decoded with `draft()` (DCT scaling, 2-8x less work) and other big images are box-reduced,
because the CNN encoders only look at ~224-260 px crops.
"""
from __future__ import annotations

import io
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import IMAGE_EXTENSIONS
from retrieval.errors import ImageDecodeError

#: Images with more pixels than this (from the header) are refused: ~300 MB of RGB per decode worker.
DEFAULT_MAX_MEGAPIXELS = 100.0
#: Decoded pictures keep their shorter side >= this many pixels (JPEG draft / box reduce); None keeps full size.
DEFAULT_TARGET_SIZE = 600

_ORIENTATION_TAG = 0x0112
_REASON_CHARS = 120
_pil_guard_lock = threading.Lock()


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True if the file name ends with one of `IMAGE_EXTENSIONS`, in any case."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


#: Leading bytes of image formats, for files whose name does not say what they are (`sniff_image`).
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"), (0, b"\x89PNG\r\n\x1a\n"), (0, b"GIF87a"), (0, b"GIF89a"), (0, b"BM"),
    (0, b"II*\x00"), (0, b"MM\x00*"), (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n"), (0, b"\xff\x4f\xff\x51"),
    (0, b"qoif"), (8, b"WEBP"), (4, b"ftypheic"), (4, b"ftypheix"), (4, b"ftypmif1"), (4, b"ftypavif"),
    (4, b"ftypavis"), (4, b"ftyphevc"),
)
_NETPBM = re.compile(rb"^P[1-6]\s")


def sniff_image(path: str | os.PathLike[str]) -> bool:
    """True when the file's first bytes are an image signature (JPEG, PNG, GIF, BMP, TIFF, JPEG 2000, WebP,
    HEIF/AVIF, QOI, netpbm): what finds a photo saved without (or with the wrong) extension."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError:
        return False
    return any(head[at:at + len(sig)] == sig for at, sig in _SIGNATURES) or bool(_NETPBM.match(head))


_plugins_lock = threading.Lock()
_plugins_ready = False


def _register_plugins() -> None:
    """HEIC/HEIF decoding for Pillow (pillow-heif); AVIF and JPEG 2000 are built into Pillow."""
    global _plugins_ready
    if _plugins_ready:
        return
    with _plugins_lock:
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
        except ImportError:  # without pillow-heif a HEIC file is skipped with a reason naming the fix
            pass
        _plugins_ready = True


def _decode_raw(data: bytes, max_megapixels: float | None) -> Any:
    """Camera RAW through rawpy (demosaiced, camera white balance, 8-bit); ImageDecodeError naming the extra."""
    try:
        import rawpy
    except ImportError:
        raise ImageDecodeError("camera RAW file: install `pip install 'retrieval[raw]'` (rawpy) to index it") from None
    from PIL import Image

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            h, w = raw.sizes.height, raw.sizes.width
            if max_megapixels is not None and w * h > max_megapixels * 1e6:
                raise ImageDecodeError(f"too large: {w}x{h} = {w * h / 1e6:.0f} MP exceeds --max-megapixels "
                                       f"{max_megapixels:g}")
            rgb = raw.postprocess(use_camera_wb=True, output_bps=8, half_size=True)
    except ImageDecodeError:
        raise
    except Exception as exc:  # rawpy.LibRawError and friends
        raise ImageDecodeError(f"corrupt camera RAW ({type(exc).__name__}: {_short(exc)})") from None
    return Image.fromarray(rgb, mode="RGB")


def load_image(
    path: str | os.PathLike[str],
    max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS,
    target_size: int | None = DEFAULT_TARGET_SIZE,
) -> Any:
    """Read and decode one file -> RGB `PIL.Image.Image` (EXIF orientation applied). Raises ImageDecodeError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{path.name}: file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{path.name}: is a folder, not an image file") from None
    except PermissionError:
        raise ImageDecodeError(f"{path.name}: permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(f"{path.name}: cannot read file ({_short(exc)})") from None
    return decode_image(data, max_megapixels=max_megapixels, target_size=target_size)


def decode_image(
    data: bytes,
    max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS,
    target_size: int | None = DEFAULT_TARGET_SIZE,
) -> Any:
    """Decode image bytes (already read, e.g. to hash them once) -> RGB image. Raises ImageDecodeError."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    _allow_pil_up_to(max_megapixels)
    _register_plugins()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF/ICC chatter: we check size ourselves
            image = Image.open(io.BytesIO(data))
            _check_pixels(image, max_megapixels)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # GIF / APNG / multi-page TIFF: first frame
            if image.format == "JPEG" and target_size:
                image.draft("RGB", (target_size, target_size))
            image.load()
            image = _upright(image)
            rgb = to_rgb(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        if _looks_raw(data):
            return _reduce(_upright(_decode_raw(data, max_megapixels)), target_size)
        raise ImageDecodeError("not an image (unrecognised file format)") from None
    except Image.DecompressionBombError as exc:  # PIL's guard fired before our header check could run
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "image"
        cap = f"--max-megapixels {max_megapixels:g}" if max_megapixels is not None else "the decompression-bomb limit"
        raise ImageDecodeError(f"too large: {size} exceeds {cap}") from None
    except MemoryError:
        raise ImageDecodeError("too large: out of memory while decoding") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error...
        text = str(exc)
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise ImageDecodeError(f"truncated file ({_short(exc)})") from None
        raise ImageDecodeError(f"corrupt image data ({type(exc).__name__}: {_short(exc)})") from None
    return _reduce(rgb, target_size)


def _looks_raw(data: bytes) -> bool:
    """RAW containers Pillow does not open: Canon CR3 (ISO box "crx"), Fuji RAF, Panasonic RW2, Olympus ORF, and
    TIFF-based RAWs Pillow rejects."""
    head = data[:16]
    return (head[4:12] == b"ftypcrx " or head.startswith(b"FUJIFILM") or head[:4] in (b"IIU\x00", b"IIRO", b"IIRS",
            b"II*\x00", b"MM\x00*"))


def to_rgb(image: Any) -> Any:
    """Any PIL mode -> RGB. Alpha is composited on white; 16/32-bit and float data are rescaled, not clipped."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _wide_to_rgb(image)
    if mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"unsupported pixel mode {mode!r} ({_short(exc)})") from None


def _wide_to_rgb(image: Any) -> Any:
    """16-bit ints scale by 1/257; 32-bit ints and floats by their range ([0,1] floats map to 0-255)."""
    from PIL import Image

    arr = np.asarray(image)
    if image.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0
    else:
        values = arr.astype(np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if image.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = values * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = values
        elif lo >= 0.0 and hi <= 65535.0:
            scaled = values / 257.0
        else:
            scaled = (values - lo) * (255.0 / max(hi - lo, 1e-12))
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _upright(image: Any) -> Any:
    """Apply the EXIF orientation tag; a corrupt EXIF block leaves the picture as stored rather than failing."""
    from PIL import ImageOps

    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        return image
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _check_pixels(image: Any, max_megapixels: float | None) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"invalid size {width}x{height} in header")
    if max_megapixels is not None and width * height > max_megapixels * 1e6:
        raise ImageDecodeError(
            f"too large: {width}x{height} = {width * height / 1e6:.0f} MP exceeds --max-megapixels {max_megapixels:g}"
        )


def _allow_pil_up_to(max_megapixels: float | None) -> None:
    """PIL's own bomb guard (~179 MP) would pre-empt a larger user cap; raise it to the cap, never lower it."""
    from PIL import Image

    if max_megapixels is None:
        return
    wanted = int(max_megapixels * 1e6)
    with _pil_guard_lock:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and current < wanted:
            Image.MAX_IMAGE_PIXELS = wanted


def _reduce(image: Any, target_size: int | None) -> Any:
    """Box-reduce by an integer factor while the shorter side stays >= target_size (cheap, alias-free)."""
    if not target_size:
        return image
    factor = min(image.size) // target_size
    return image.reduce(factor) if factor >= 2 else image


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."
