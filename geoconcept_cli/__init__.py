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

from ._version import __version__
from .errors import GeoconceptError

if TYPE_CHECKING:
    from .inference.explainer import Explainer, load_explainer
    from .inference.locator import Locator, load_locator
    from .inference.predictor import Candidate, Predictor, load_predictor
    from .serving.service import GeoService, Photo


_LAZY = {
    "Candidate": "inference.predictor", "Predictor": "inference.predictor",
    "load_predictor": "inference.predictor",
    "Explainer": "inference.explainer", "load_explainer": "inference.explainer",
    "Locator": "inference.locator", "load_locator": "inference.locator",
    "GeoService": "serving.service", "Photo": "serving.service",
}  # fmt: skip
__all__ = [
    "Candidate", "Explainer", "GeoService", "GeoconceptError", "Locator", "Photo", "Predictor",
    "__version__", "load_explainer", "load_locator", "load_predictor",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
