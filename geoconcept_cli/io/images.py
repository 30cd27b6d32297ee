"""Robust photo loading: every odd file either becomes an RGB image or a one-line error.

Reads HEIC/HEIF (iPhone photos) through pillow-heif's Pillow opener as well as what Pillow
reads itself (JPEG, PNG, WebP, AVIF, ...). Handles EXIF rotation, alpha (composited on white),
CMYK/palette/greyscale, 16-bit images (rescaled, not clipped), truncated files and
decompression bombs.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..errors import GeoconceptError, require_file

pillow_heif.register_heif_opener()  # pillow-heif applies the HEIF orientation itself

IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif", ".heic", ".heif"
}  # fmt: skip


def photos_in(folder: Path) -> list[Path]:
    """The photos of a folder (by their suffix), sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping high bit depths."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)  # float32: half the memory of a huge photo
        hi = arr.max()
        scale = 255.0 / hi if hi > 255 else 1.0
        arr *= scale
        img = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as an upright RGB image or raise :class:`GeoconceptError`."""
    path = require_file(path, "image file")
    return _decode(path, str(path))


def decode_image(data: bytes, name: str = "upload") -> Image.Image:
    """Decode an image held in memory (an upload) exactly as :func:`load_image` opens a file;
    ``name`` labels the one-line error."""
    if not data:
        raise GeoconceptError(f"{name}: empty file, not an image")
    return _decode(io.BytesIO(data), name)


def _decode(source: Path | BinaryIO, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # A DecompressionBombWarning (over ~89 Mpx) is treated like the hard limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise GeoconceptError(
            f"{name}: image too large (over {Image.MAX_IMAGE_PIXELS:,} pixels); downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise GeoconceptError(f"{name}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise GeoconceptError(f"{name}: cannot decode image ({exc})") from None


def photo_gps(source: str | Path | bytes) -> tuple[float, float] | None:
    """The (lat, lon) a photo's EXIF GPS tags record, or None when it has none (or they are
    unreadable or out of range): the true location for a map, when the camera knew it."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            gps = img.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        if not gps:
            return None
        lat = _degrees(gps[ExifTags.GPS.GPSLatitude], gps.get(ExifTags.GPS.GPSLatitudeRef, "N"))
        lon = _degrees(gps[ExifTags.GPS.GPSLongitude], gps.get(ExifTags.GPS.GPSLongitudeRef, "E"))
    except (OSError, KeyError, ValueError, TypeError, ZeroDivisionError, SyntaxError):
        return None
    ok = math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180
    return (lat, lon) if ok else None


def _degrees(dms: tuple[float, float, float], ref: str) -> float:
    """EXIF degrees, minutes, seconds and a hemisphere letter -> signed decimal degrees."""
    d, m, s = (float(v) for v in dms)
    value = d + m / 60 + s / 3600
    return -value if str(ref).strip().upper() in ("S", "W") else value
