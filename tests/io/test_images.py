"""Every odd photo either loads as upright RGB or fails with a one-line GeoconceptError."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from geoconcept_cli.errors import GeoconceptError
from geoconcept_cli.io.images import load_image


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
