"""Geography: distances on the sphere, the offline gazetteer of place names, and region keys."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .distance import valid_latlon as valid_latlon

__getattr__ = lazy_exports(__name__, {"valid_latlon": "distance"})
