"""retrieval.index.imageio and retrieval.index.fs on a generated folder of good, odd and broken files."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.errors import DatasetError, ImageDecodeError
from retrieval.index.fs import walk_images
from retrieval.index.imageio import IMAGE_EXTENSIONS, is_image_path, load_image

#: Decodable files written by make_junk_folder.
GOOD = {
    "plain.jpg", "cmyk.jpg", "grey16.png", "palette.gif", "rotated.jpg", "tiny.png", "rgba.png", "la.png",
    "float.tif", "pic.webp", "pic.bmp", "ünïcödé name with spaces.jpg", "nested/deeper/inner photo.PNG",
}
#: Broken files -> a word their failure reason must contain.
BAD = {
    "zero.jpg": "empty",
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
    "random.png": "not an image",
    "bomb.png": "exceeds --max-megapixels",
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny file whose header claims width x height RGB pixels (never allocated)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _save(image: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)


def noise_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def make_junk_folder(root: Path) -> Path:
    """GOOD + BAD files plus things the walker must skip (hidden, non-images, a symlink loop)."""
    root.mkdir(parents=True, exist_ok=True)
    _save(noise_image(0), root / "plain.jpg")
    _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), root / "cmyk.jpg")
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    _save(Image.fromarray(ramp), root / "grey16.png")  # uint16 -> 16-bit grey PNG
    frames = [Image.new("P", (20, 20), i) for i in (1, 2)]
    for fr in frames:
        fr.putpalette([0, 0, 0, 0, 200, 0, 200, 0, 0] + [0] * (256 * 3 - 9))
    frames[0].save(root / "palette.gif", save_all=True, append_images=frames[1:])
    rot = Image.new("RGB", (40, 20), (0, 0, 255))
    rot.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    _save(rot, root / "rotated.jpg", exif=exif.tobytes(), quality=95)
    _save(Image.new("RGB", (1, 1), (10, 20, 30)), root / "tiny.png")
    _save(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), root / "rgba.png")
    _save(Image.new("LA", (8, 8), (0, 255)), root / "la.png")
    _save(Image.fromarray(np.full((8, 8), 0.5, np.float32), "F"), root / "float.tif")
    _save(noise_image(1), root / "pic.webp")
    _save(noise_image(2), root / "pic.bmp")
    _save(noise_image(3), root / "ünïcödé name with spaces.jpg")
    _save(noise_image(4), root / "nested" / "deeper" / "inner photo.PNG")

    (root / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    noise_image(5, (256, 256)).save(buf, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "text.jpg").write_text("this is not a picture\n")
    (root / "random.png").write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "bomb.png").write_bytes(bomb_png())

    (root / ".hidden.jpg").write_bytes((root / "plain.jpg").read_bytes())
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "notes.txt").write_text("not an image extension")
    os.symlink("..", root / "nested" / "loop")  # nested/loop -> root: must not recurse forever
    return root


@pytest.fixture()
def junk(tmp_path: Path) -> Path:
    return make_junk_folder(tmp_path / "photos")


def test_extensions_any_case() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert is_image_path("a/B.JPEG") and is_image_path("x.TiF") and not is_image_path("x.txt")


def test_walk_finds_exactly_the_image_files_sorted_without_loops(junk: Path) -> None:
    entries = walk_images(junk)
    rel = [e.rel_path for e in entries]
    assert rel == sorted(GOOD | set(BAD))
    plain = next(e for e in entries if e.rel_path == "plain.jpg")
    assert plain.abs_path == junk / "plain.jpg" and plain.size == (junk / "plain.jpg").stat().st_size
    assert plain.mtime_ns == (junk / "plain.jpg").stat().st_mtime_ns


def test_walk_follows_symlinked_folder_once(tmp_path: Path) -> None:
    album = tmp_path / "elsewhere" / "album"
    _save(noise_image(0), album / "a.jpg")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(album, root / "linked")
    os.symlink(album, root / "linked-again")  # same real folder: indexed once
    assert [e.rel_path for e in walk_images(root)] == ["linked/a.jpg"]


def test_walk_missing_root_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist; pass an existing folder to build-index"):
        walk_images(tmp_path / "nope")


@pytest.mark.parametrize("name", sorted(GOOD))
def test_every_good_file_decodes_to_rgb(junk: Path, name: str) -> None:
    image = load_image(junk / name)
    assert image.mode == "RGB" and min(image.size) >= 1


@pytest.mark.parametrize("name", sorted(BAD))
def test_every_bad_file_raises_with_reason(junk: Path, name: str) -> None:
    with pytest.raises(ImageDecodeError, match=BAD[name]):
        load_image(junk / name)


def test_exif_orientation_is_applied(junk: Path) -> None:
    image = load_image(junk / "rotated.jpg")
    assert image.size == (20, 40)  # stored 40x20, orientation 6 -> portrait
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[0] > 200 and top[2] < 60  # red half ends up on top after a 90 degree clockwise turn
    assert bottom[2] > 200 and bottom[0] < 60


def test_sixteen_bit_is_scaled_not_clipped(junk: Path) -> None:
    row = np.asarray(load_image(junk / "grey16.png"))[0, :, 0].astype(int)
    assert row[0] <= 2 and row[-1] >= 253
    assert 100 <= row[32] <= 155  # mid-ramp stays mid-grey (clipping would give 255)
    assert np.all(np.diff(row) >= 0)


def test_modes_convert_with_the_right_colours(junk: Path) -> None:
    assert np.asarray(load_image(junk / "cmyk.jpg"))[16, 16].tolist()[0] > 200  # CMYK (0,255,255,0) = red
    assert np.asarray(load_image(junk / "cmyk.jpg"))[16, 16].tolist()[1] < 60
    assert np.asarray(load_image(junk / "rgba.png"))[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert np.asarray(load_image(junk / "la.png"))[0, 0].tolist() == [0, 0, 0]  # opaque black
    assert np.asarray(load_image(junk / "palette.gif"))[0, 0].tolist() == [0, 200, 0]  # first frame, not second
    assert 120 <= np.asarray(load_image(junk / "float.tif"))[0, 0, 0] <= 135  # float 0.5 -> mid grey
    assert np.asarray(load_image(junk / "tiny.png")).tolist() == [[[10, 20, 30]]]


def test_pixel_cap_is_checked_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    noise_image(0, (100, 100)).save(path)
    with pytest.raises(ImageDecodeError, match="exceeds --max-megapixels 0.005"):
        load_image(path, max_megapixels=0.005)
    assert load_image(path, max_megapixels=0.01).size == (100, 100)


def test_big_jpeg_is_decoded_at_reduced_size_keeping_short_side(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2600, 2000), (0, 128, 0)).save(path)
    image = load_image(path, target_size=600)
    assert min(image.size) >= 600 and image.size[0] < 2600
    assert abs(image.size[0] / image.size[1] - 1.3) < 0.02
    assert load_image(path, target_size=None).size == (2600, 2000)


def test_missing_file_raises_decode_error(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(tmp_path / "gone.jpg")
