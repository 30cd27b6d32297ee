"""Files: atomic artifacts and the cache, photos, archives of photos, and tables."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .artifacts import GALLERY_CACHE_GB as GALLERY_CACHE_GB
    from .artifacts import cache_usage as cache_usage
    from .artifacts import clear_cache as clear_cache
    from .artifacts import default_cache_dir as default_cache_dir
    from .artifacts import writable_file as writable_file
    from .images import load_image as load_image
    from .images import photo_gps as photo_gps
    from .images import photos_in as photos_in

__getattr__ = lazy_exports(
    __name__,
    {
        "GALLERY_CACHE_GB": "artifacts",
        "cache_usage": "artifacts",
        "clear_cache": "artifacts",
        "default_cache_dir": "artifacts",
        "writable_file": "artifacts",
        "load_image": "images",
        "photo_gps": "images",
        "photos_in": "images",
    },
)
