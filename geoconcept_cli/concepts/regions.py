"""Regions the concept set is built for, and the region keys the review file accepts.

A region key is a continent name or an ISO 3166-1 alpha-2 code; a region whose article is not
tied to one place (a biome or climate zone) spreads its evidence over several continents.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from ..errors import GeoconceptError

CONTINENTS: tuple[str, ...] = (
    "Africa",
    "Asia",
    "Europe",
    "North America",
    "South America",
    "Oceania",
    "Antarctica",
)

# ISO 3166-1 alpha-2, the 249 officially assigned codes, plus XK (Kosovo, user-assigned but
# used by OSM, the EU and most geodata).
ISO_ALPHA2: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW XK
    """.split()
)

# Continent of each country (GeoNames countryInfo, CC BY 4.0), as GeoNames codes.
_CONTINENT_CODES = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
                    "SA": "South America", "OC": "Oceania", "AN": "Antarctica"}  # fmt: skip
CONTINENT_OF: dict[str, str] = {
    cc: _CONTINENT_CODES[code]
    for cc, code in (
        pair.split(":")
        for pair in """
    AD:EU AE:AS AF:AS AG:NA AI:NA AL:EU AM:AS AN:NA AO:AF AQ:AN AR:SA AS:OC AT:EU AU:OC
    AW:NA AX:EU AZ:AS BA:EU BB:NA BD:AS BE:EU BF:AF BG:EU BH:AS BI:AF BJ:AF BL:NA BM:NA
    BN:AS BO:SA BQ:NA BR:SA BS:NA BT:AS BV:AN BW:AF BY:EU BZ:NA CA:NA CC:AS CD:AF CF:AF
    CG:AF CH:EU CI:AF CK:OC CL:SA CM:AF CN:AS CO:SA CR:NA CS:EU CU:NA CV:AF CW:NA CX:OC
    CY:EU CZ:EU DE:EU DJ:AF DK:EU DM:NA DO:NA DZ:AF EC:SA EE:EU EG:AF EH:AF ER:AF ES:EU
    ET:AF FI:EU FJ:OC FK:SA FM:OC FO:EU FR:EU GA:AF GB:EU GD:NA GE:AS GF:SA GG:EU GH:AF
    GI:EU GL:NA GM:AF GN:AF GP:NA GQ:AF GR:EU GS:AN GT:NA GU:OC GW:AF GY:SA HK:AS HM:AN
    HN:NA HR:EU HT:NA HU:EU ID:AS IE:EU IL:AS IM:EU IN:AS IO:AS IQ:AS IR:AS IS:EU IT:EU
    JE:EU JM:NA JO:AS JP:AS KE:AF KG:AS KH:AS KI:OC KM:AF KN:NA KP:AS KR:AS KW:AS KY:NA
    KZ:AS LA:AS LB:AS LC:NA LI:EU LK:AS LR:AF LS:AF LT:EU LU:EU LV:EU LY:AF MA:AF MC:EU
    MD:EU ME:EU MF:NA MG:AF MH:OC MK:EU ML:AF MM:AS MN:AS MO:AS MP:OC MQ:NA MR:AF MS:NA
    MT:EU MU:AF MV:AS MW:AF MX:NA MY:AS MZ:AF NA:AF NC:OC NE:AF NF:OC NG:AF NI:NA NL:EU
    NO:EU NP:AS NR:OC NU:OC NZ:OC OM:AS PA:NA PE:SA PF:OC PG:OC PH:AS PK:AS PL:EU PM:NA
    PN:OC PR:NA PS:AS PT:EU PW:OC PY:SA QA:AS RE:AF RO:EU RS:EU RU:EU RW:AF SA:AS SB:OC
    SC:AF SD:AF SE:EU SG:AS SH:AF SI:EU SJ:EU SK:EU SL:AF SM:EU SN:AF SO:AF SR:SA SS:AF
    ST:AF SV:NA SX:NA SY:AS SZ:AF TC:NA TD:AF TF:AN TG:AF TH:AS TJ:AS TK:OC TL:OC TM:AS
    TN:AF TO:OC TR:AS TT:NA TV:OC TW:AS TZ:AF UA:EU UG:AF UM:OC US:NA UY:SA UZ:AS VA:EU
    VC:NA VE:SA VG:NA VI:NA VN:AS VU:OC WF:OC WS:OC XK:EU YE:AS YT:AF ZA:AF ZM:AF ZW:AF
    """.split()
    )
}


@lru_cache(maxsize=4096)
def country_and_continent(lat: float, lon: float) -> tuple[str, str]:
    """Region keys of a point: the ISO country code and continent ``geocode`` gives it (its
    nearest settlement's; none with no town within 200 km)."""
    import numpy as np

    from ..geocode import reverse_geocode  # which imports this module

    place = reverse_geocode(np.array([[lat, lon]]))
    return str(place.country[0]), str(place.continent[0])


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
