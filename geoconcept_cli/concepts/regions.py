"""Regions the concept set is built for, and the region keys the review file accepts.

A region key is a continent name or an ISO 3166-1 alpha-2 code; a region whose article is not
tied to one place (a biome or climate zone) spreads its evidence over several continents.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..errors import GeoconceptError
from ..geo.regions import CONTINENTS, ISO_ALPHA2

RegionKind = Literal["continent", "country", "zone"]


def is_region_key(key: str) -> bool:
    """True for a continent name (exact spelling) or an upper-case ISO alpha-2 code."""
    return key in CONTINENTS or key in ISO_ALPHA2


@dataclass(frozen=True)
class Region:
    """One region to mine: its English name, Wikipedia article and the review keys it feeds."""

    name: str
    article: str
    keys: tuple[str, ...]
    kind: RegionKind

    def __post_init__(self) -> None:
        bad = [k for k in self.keys if not is_region_key(k)]
        if not self.keys or bad:
            raise GeoconceptError(
                f"region {self.name!r}: bad region key(s) {bad or '(none)'}; use a continent "
                f"name ({', '.join(CONTINENTS)}) or an ISO alpha-2 code"
            )


def _country(code: str, name: str, article: str | None = None) -> Region:
    return Region(name=name, article=article or name, keys=(code,), kind="country")


def _continent(name: str) -> Region:
    return Region(name=name, article=name, keys=(name,), kind="continent")


def _zone(article: str, *continents: str) -> Region:
    return Region(name=article, article=article, keys=tuple(continents), kind="zone")


DEFAULT_REGIONS: tuple[Region, ...] = (
    *(_continent(c) for c in CONTINENTS),
    _country("US", "United States"),
    _country("CA", "Canada"),
    _country("MX", "Mexico"),
    _country("BR", "Brazil"),
    _country("AR", "Argentina"),
    _country("CL", "Chile"),
    _country("PE", "Peru"),
    _country("CO", "Colombia"),
    _country("GB", "United Kingdom"),
    _country("FR", "France"),
    _country("DE", "Germany"),
    _country("ES", "Spain"),
    _country("IT", "Italy"),
    _country("NL", "Netherlands"),
    _country("SE", "Sweden"),
    _country("NO", "Norway"),
    _country("PL", "Poland"),
    _country("RU", "Russia"),
    _country("TR", "Turkey"),
    _country("GR", "Greece"),
    _country("UA", "Ukraine"),
    _country("EG", "Egypt"),
    _country("MA", "Morocco"),
    _country("NG", "Nigeria"),
    _country("KE", "Kenya"),
    _country("ZA", "South Africa"),
    _country("ET", "Ethiopia"),
    _country("SA", "Saudi Arabia"),
    _country("AE", "United Arab Emirates"),
    _country("IR", "Iran"),
    _country("IN", "India"),
    _country("PK", "Pakistan"),
    _country("BD", "Bangladesh"),
    _country("CN", "China"),
    _country("JP", "Japan"),
    _country("KR", "South Korea"),
    _country("TH", "Thailand"),
    _country("VN", "Vietnam"),
    _country("ID", "Indonesia"),
    _country("PH", "Philippines"),
    _country("MY", "Malaysia"),
    _country("AU", "Australia"),
    _country("NZ", "New Zealand"),
    _zone("Tropical rainforest", "South America", "Africa", "Asia", "Oceania"),
    _zone("Savanna", "Africa", "South America", "Oceania", "Asia"),
    _zone("Desert", "Africa", "Asia", "North America", "Oceania", "South America"),
    _zone("Taiga", "Europe", "Asia", "North America"),
    _zone("Tundra", "North America", "Europe", "Asia"),
    _zone("Steppe", "Asia", "Europe"),
    _zone("Prairie", "North America"),
    _zone("Mangrove", "Asia", "Africa", "Oceania", "South America", "North America"),
    _zone("Mediterranean climate", "Europe", "Africa", "North America", "South America", "Oceania"),
    _zone("Monsoon", "Asia", "Africa"),
    _zone("Temperate broadleaf and mixed forests", "Europe", "North America", "Asia"),
    _zone("Coral reef", "Oceania", "Asia", "North America"),
)


def resolve_regions(specs: Iterable[str]) -> list[Region]:
    """Turn user region specs into regions.

    A spec is a default region's name or key ("France", "FR", "Savanna", "Europe"), or a custom
    region ``KEY[,KEY...]=Article title`` (e.g. ``LU=Luxembourg``, ``AS,OC=Rice paddy``).
    """
    by_name = {r.name.casefold(): r for r in DEFAULT_REGIONS}
    by_key = {r.keys[0].casefold(): r for r in DEFAULT_REGIONS if r.kind != "zone"}
    out: list[Region] = []
    for spec in specs:
        spec = spec.strip()
        if "=" in spec:
            keys_part, article = (s.strip() for s in spec.split("=", 1))
            keys = tuple(k.strip() for k in keys_part.split(",") if k.strip())
            if not article:
                raise GeoconceptError(f"region {spec!r}: no article title after '='")
            kind: RegionKind = "zone" if len(keys) > 1 else "country"
            if len(keys) == 1 and keys[0] in CONTINENTS:
                kind = "continent"
            out.append(Region(name=article, article=article, keys=keys, kind=kind))
            continue
        region = by_name.get(spec.casefold()) or by_key.get(spec.casefold())
        if region is None:
            raise GeoconceptError(
                f"unknown region {spec!r}: use a default region's name or key (e.g. 'France', "
                "'FR', 'Savanna') or KEY=Article title (e.g. 'LU=Luxembourg')"
            )
        out.append(region)
    if not out:
        raise GeoconceptError("no regions given")
    return list(dict.fromkeys(out))
