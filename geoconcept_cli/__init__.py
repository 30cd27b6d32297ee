"""geoconcept: interpretable worldwide image geo-localization on top of GeoCLIP.

The package is a library first (``encoders``, ``gallery``, ``predict``, ``geo`` ...); the
``geoconcept`` command in ``cli.py`` only parses arguments and prints results.
"""

from .errors import GeoconceptError

__version__ = "0.1.0"
__all__ = ["GeoconceptError", "__version__"]
