"""Robust photo loading: every odd file either becomes an RGB image or a one-line error.

Handles EXIF rotation, alpha (composited on white), CMYK/palette/greyscale, 16-bit images
(rescaled, not clipped), truncated files and decompression bombs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import GeoconceptError, require_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping high bit depths."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max()
        scale = 255.0 / hi if hi > 255 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as an upright RGB image or raise :class:`GeoconceptError`."""
    path = require_file(path, "image file")
    try:
        with warnings.catch_warnings():
            # A DecompressionBombWarning (over ~89 Mpx) is treated like the hard limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise GeoconceptError(
            f"{path}: image too large (over {Image.MAX_IMAGE_PIXELS:,} pixels); downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise GeoconceptError(f"{path}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise GeoconceptError(f"{path}: cannot decode image ({exc})") from None
