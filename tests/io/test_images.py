"""Every odd photo either loads as upright RGB or fails with a one-line GeoconceptError."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import heic_of, shared_data
from PIL import Image

from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.io.images import decode_image, load_image, photo_gps


def _jpeg(path, size=(64, 48), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path, "JPEG")
    return path


def test_missing_and_directory(tmp_path):
    with pytest.raises(GeoconceptError, match="nope.jpg: no such image file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(GeoconceptError, match="is a folder, expected an image file"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("hello, I am text")
    with pytest.raises(GeoconceptError, match="not an image"):
        load_image(bad)


def test_truncated_jpeg(tmp_path):
    full = _jpeg(tmp_path / "full.jpg", size=(256, 256)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(GeoconceptError, match="cannot decode"):
        load_image(cut)


def test_png_alpha_composited_on_white(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_16bit_rescaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    arr = np.full((8, 8), 30000, dtype=np.uint16)
    arr[0, 0] = 60000
    Image.fromarray(arr).save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0))[0] == 255
    assert 120 <= img.getpixel((4, 4))[0] <= 135  # 30000/60000 of full scale, not clipped to 255


def test_exif_rotation_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.new("RGB", (60, 20), (0, 0, 255)).save(path, exif=exif)
    assert load_image(path).size == (20, 60)


def test_decompression_bomb(tmp_path, monkeypatch):
    path = _jpeg(tmp_path / "big.jpg", size=(400, 400))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(GeoconceptError, match="too large"):
        load_image(path)


def test_heic_reads_upright_with_its_gps(tmp_path):
    """An iPhone's default format: a real photo saved as HEIC turned a quarter (orientation 6)
    loads as the same upright picture as the JPEG carrying that orientation, GPS and all."""
    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    madrid = ((40.0, 25.0, 0.0), "N", (3.0, 42.0, 0.0), "W")
    heic = tmp_path / "photo.HEIC"
    heic.write_bytes(heic_of(photo, orientation=6, gps=madrid))
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(photo).save(turned, quality=95, exif=exif)
    want = np.asarray(load_image(turned), dtype=np.float32)
    got = load_image(heic)
    assert got.mode == "RGB" and got.size == load_image(turned).size != Image.open(photo).size
    assert np.abs(np.asarray(got, dtype=np.float32) - want).mean() < 6  # lossy, same picture
    assert decode_image(heic.read_bytes()).size == got.size  # an upload, the same
    assert photo_gps(heic) == pytest.approx((40 + 25 / 60, -(3 + 42 / 60)))
