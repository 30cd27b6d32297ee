"""Serving: the warm service behind `geoconcept serve`, its HTTP layer and the page's static
files."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .http import serve as serve
    from .service import GeoService as GeoService
    from .service import Photo as Photo

__getattr__ = lazy_exports(__name__, {"GeoService": "service", "Photo": "service", "serve": "http"})
