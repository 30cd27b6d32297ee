"""Serving: the warm services behind `geoconcept serve` (torch's, and an ONNX bundle's with
no torch), its HTTP layer and the page's static files."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .http import serve as serve
    from .onnx_service import OnnxService as OnnxService
    from .photo_answers import Photo as Photo
    from .service import GeoService as GeoService

__getattr__ = lazy_exports(
    __name__,
    {
        "GeoService": "service",
        "OnnxService": "onnx_service",
        "Photo": "photo_answers",
        "serve": "http",
    },
)
