"""Every common photo format: what Pillow reads (netpbm, JPEG 2000, AVIF, QOI, TGA), HEIC through pillow-heif, photos
found by content when their name has no or another extension, a corrupt file of each format skipped with a reason,
and camera RAW naming its extra when rawpy is absent. The child detector decodes with the same `load_image`."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.errors import ImageDecodeError
from retrieval.index.fs import walk_images
from retrieval.index.imageio import decode_image, load_image, sniff_image
from tests.test_build import build, colour

FORMATS = [("ppm", "PPM", "RGB"), ("pgm", "PPM", "L"), ("pbm", "PPM", "1"), ("jp2", "JPEG2000", "RGB"),
           ("avif", "AVIF", "RGB"), ("qoi", "QOI", "RGB"), ("tga", "TGA", "RGB"), ("heic", "HEIF", "RGB")]


def picture(mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    arr[:, :32] = (200, 30, 30)
    return Image.fromarray(arr).convert(mode)


def save(path: Path, fmt: str, mode: str) -> bytes:
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    picture(mode).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.mark.parametrize("ext,fmt,mode", FORMATS)
def test_each_format_decodes_upright_rgb_and_a_truncated_copy_is_skipped_with_a_reason(tmp_path, ext, fmt, mode):
    data = save(tmp_path / f"photo.{ext}", fmt, mode)
    image = load_image(tmp_path / f"photo.{ext}")
    assert image.mode == "RGB" and image.size == (64, 48)
    red = np.asarray(image)[:, :16].reshape(-1, 3).mean(0)
    if mode == "RGB":
        assert red[0] > 150 and red[1] < 90  # the left half is red: pixels, not a blank
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data[: max(12, len(data) // 3)])
    assert len(str(err.value).splitlines()) == 1 and str(err.value)


def test_walk_finds_every_format_and_photos_named_without_an_extension(tmp_path):
    for ext, fmt, mode in FORMATS:
        save(tmp_path / f"p.{ext}", fmt, mode)
    colour(tmp_path / "seed.jpg", (10, 200, 10))
    (tmp_path / "IMG_0001").write_bytes((tmp_path / "seed.jpg").read_bytes())  # a JPEG without extension
    (tmp_path / "scan.dat").write_bytes((tmp_path / "p.ppm").read_bytes())  # a netpbm file, wrong extension
    (tmp_path / "README").write_text("not an image")
    names = {f.rel_path for f in walk_images(tmp_path)}
    assert names == {f"p.{e}" for e, _, _ in FORMATS} | {"seed.jpg", "IMG_0001", "scan.dat"}
    assert sniff_image(tmp_path / "IMG_0001") and not sniff_image(tmp_path / "README")


def test_build_indexes_every_format_and_reports_corrupt_ones(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for ext, fmt, mode in FORMATS:
        data = save(images / f"good.{ext}", fmt, mode)
        (images / f"bad.{ext}").write_bytes(data[: len(data) // 3])
    report = build(images, tmp_path / "idx", cache=False)
    assert report.count == len(FORMATS)
    assert {p for p, _ in report.failures} == {f"bad.{e}" for e, _, _ in FORMATS}
    assert all(reason for _, reason in report.failures)


def test_camera_raw_without_rawpy_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_rawpy(name, *a, **k):
        if name == "rawpy":
            raise ImportError("no rawpy")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_rawpy)
    cr3 = b"\x00\x00\x00\x18ftypcrx " + b"\x00" * 64  # a Canon CR3 header
    with pytest.raises(ImageDecodeError, match=r"retrieval\[raw\]"):
        decode_image(cr3)
