"""geoconcept: interpretable worldwide image geo-localization on top of GeoCLIP.

The package is a library first; the ``geoconcept`` command (``cli.py``) and ``geoconcept
serve`` (``server.py``) only parse requests and print or send results. The public API::

    from geoconcept_cli import load_explainer
    explainer = load_explainer("runs/concepts")  # or no checkpoint: pretrained GeoCLIP
    answer = explainer.explain("photo.jpg", check=True)  # the JSON of `explain --json`

Names are imported on first use, so ``geoconcept --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import GeoconceptError

if TYPE_CHECKING:
    from .explain import Explainer, load_explainer
    from .predict import Candidate, Predictor, load_predictor
    from .service import GeoService, Photo
    from .where import Locator, load_locator

__version__ = "0.1.0"

_LAZY = {
    "Candidate": "predict", "Predictor": "predict", "load_predictor": "predict",
    "Explainer": "explain", "load_explainer": "explain",
    "Locator": "where", "load_locator": "where",
    "GeoService": "service", "Photo": "service",
}  # fmt: skip
__all__ = [
    "Candidate", "Explainer", "GeoService", "GeoconceptError", "Locator", "Photo", "Predictor",
    "__version__", "load_explainer", "load_locator", "load_predictor",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
