"""Candidate concepts from WorldKG: OSM-derived classes present in a region, with counts.

The query goes through SPARQLWrapper to a configurable SPARQL 1.1 endpoint. Region names are
the only outside text in it and enter as escaped literals (``sparql_literal``), so no region
name can change the query's structure.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
from collections.abc import Sequence

from SPARQLWrapper import GET, JSON, SPARQLWrapper
from SPARQLWrapper.SPARQLExceptions import EndPointInternalError, SPARQLWrapperException

from ...errors import GeoconceptError
from ..regions import Region
from .cache import Response, ResponseCache
from .http import (
    RetryPolicy,
    TransientError,
    check_status,
    with_retries,
)
from .normalize import Candidate, classify

WORLDKG_ENDPOINT = "https://www.worldkg.org/sparql"
WKGS = "http://www.worldkg.org/schema/"
SOURCE = "worldkg"
USER_AGENT = "geoconcept/0.1 (https://example.invalid)"

# WorldKG top classes whose subclasses can show in a photo, and the type a subclass gets when
# the keyword table cannot type its name.
TOP_CLASSES: dict[str, tuple[str, str]] = {
    "Natural": ("natural", "terrain"),
    "Water": ("natural", "water"),
    "Waterway": ("natural", "water"),
    "Landuse": ("human", "agriculture"),
    "Building": ("human", "architecture"),
    "Historic": ("human", "architecture"),
    "ManMade": ("human", "utility_infrastructure"),
    "Power": ("human", "utility_infrastructure"),
    "Railway": ("human", "utility_infrastructure"),
    "Aerialway": ("human", "utility_infrastructure"),
    "Highway": ("human", "utility_infrastructure"),
    "Barrier": ("human", "fence_wall"),
    "Leisure": ("human", "leisure_sport"),
    "Tourism": ("human", "leisure_sport"),
    "Amenity": ("human", "street_furniture"),
}
_LOCAL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_ECHAR = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def sparql_literal(text: str) -> str:
    """``text`` as a SPARQL 1.1 double-quoted string literal (STRING_LITERAL_QUOTE + ECHAR).

    Backslash, the double quote, LF, CR, TAB, BS and FF are escaped; the single quote needs no
    escape inside double quotes (and rdflib's parser rejects ``\\'`` there). SPARQL expands
    ``\\uXXXX`` escapes in the whole query text before parsing, so a ``u``/``U`` right after an
    escaped backslash is written as the fixed-length ``\\U00000075``/``\\U00000055``: the
    text round-trips whether or not an engine does that expansion.
    """
    out = []
    previous = ""
    for ch in text:
        if previous == "\\" and ch in "uU":
            out.append("\\U00000075" if ch == "u" else "\\U00000055")
        else:
            out.append(_ECHAR.get(ch, ch))
        previous = ch
    return '"' + "".join(out) + '"'


def camel_to_text(name: str) -> str:
    """A WorldKG class local name as concept text: "RicePaddy" -> "rice paddy", "ATM" -> "atm"."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return spaced.replace("_", " ").lower().strip()


def region_query(region: Region, top_classes: Sequence[str], limit: int = 100) -> str:
    """The SELECT query counting entities per WorldKG class in a region.

    Countries match ``wkgs:isInCountry`` (the English name) or ``wkgs:addrCountry`` (ISO
    code); continents and zones match ``wkgs:isInContinent`` for each continent key.
    """
    bad = [c for c in top_classes if not _LOCAL_NAME.match(c)]
    if bad or not top_classes:
        raise GeoconceptError(f"worldkg: bad top class name(s) {bad or '(none)'}")
    if region.kind == "country":
        pairs = [("wkgs:isInCountry", region.name), ("wkgs:addrCountry", region.keys[0])]
    else:
        pairs = [("wkgs:isInContinent", key) for key in region.keys]
    places = " ".join(f"({prop} {sparql_literal(value)})" for prop, value in pairs)
    tops = " ".join(f"wkgs:{c}" for c in top_classes)
    return (
        f"PREFIX wkgs: <{WKGS}>\n"
        "PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n"
        "SELECT ?class ?top (COUNT(DISTINCT ?entity) AS ?count) WHERE {\n"
        f"  VALUES (?where ?place) {{ {places} }}\n"
        f"  VALUES ?top {{ {tops} }}\n"
        "  ?class rdfs:subClassOf ?top .\n"
        "  ?entity a ?class ;\n"
        "          ?where ?place .\n"
        "}\n"
        "GROUP BY ?class ?top\n"
        "ORDER BY DESC(?count) ?class\n"
        f"LIMIT {int(limit)}\n"
    )


def _run_query(endpoint: str, query: str, timeout: float, what: str) -> Response:
    """One SPARQLWrapper round trip, its failures sorted into retryable and not."""
    client = SPARQLWrapper(endpoint, agent=USER_AGENT)
    client.setMethod(GET)
    client.setReturnFormat(JSON)
    client.setTimeout(max(1, round(timeout)))  # SPARQLWrapper takes whole seconds
    client.setQuery(query)
    try:
        result = client.query()
        body = result.response.read().decode("utf-8")
    except urllib.error.HTTPError as err:  # statuses SPARQLWrapper does not map itself
        check_status(err.code, err.headers.get("Retry-After") if err.headers else None, what)
        raise  # check_status raised already: HTTPError is never a 200
    except EndPointInternalError as err:
        raise TransientError("HTTP 500") from err
    except SPARQLWrapperException as err:  # 400, 401, 404, 414
        raise GeoconceptError(f"{what}: {type(err).__name__}") from err
    except TimeoutError as err:
        raise TransientError("timed out") from err
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError):
            raise TransientError("timed out") from err
        raise TransientError(f"connection failed ({type(reason).__name__})") from err
    try:
        json.loads(body)
    except ValueError as err:
        raise TransientError("the reply is not JSON") from err
    return {"status": 200, "content_type": "application/sparql-results+json", "body": body}


def fetch_classes(
    region: Region,
    cache: ResponseCache,
    policy: RetryPolicy,
    *,
    endpoint: str = WORLDKG_ENDPOINT,
    top_classes: Sequence[str] = tuple(TOP_CLASSES),
    limit: int = 100,
    timeout: float = 30.0,
) -> list[tuple[str, str, int]]:
    """(class local name, top class local name, entity count) for a region, most frequent first."""
    query = region_query(region, top_classes, limit)
    what = f"worldkg query for region {region.name!r}"
    stored = cache.fetch(
        SOURCE,
        endpoint,
        {"query": query},
        lambda: with_retries(
            lambda: _run_query(endpoint, query, timeout, what), what=what, policy=policy
        ),
        what=what,
    )
    try:
        bindings = json.loads(stored["body"])["results"]["bindings"]
        rows = [
            (b["class"]["value"], b["top"]["value"], int(b["count"]["value"]))
            for b in bindings
            if "class" in b and "top" in b  # an empty GROUP BY may yield one unbound row
        ]
    except (ValueError, KeyError, TypeError) as err:
        raise GeoconceptError(f"{what}: the endpoint's reply is not SPARQL JSON results") from err
    return [
        (cls.removeprefix(WKGS), top.removeprefix(WKGS), n)
        for cls, top, n in rows
        if cls.startswith(WKGS) and n > 0
    ]


def extract_candidates(region: Region, classes: list[tuple[str, str, int]]) -> list[Candidate]:
    """Candidates from a region's class counts; score = count / the region's largest count."""
    if not classes:
        return []
    top_count = max(n for _, _, n in classes)
    out = []
    for cls, top, n in classes:
        text = camel_to_text(cls)
        category, subcategory = classify(text) or TOP_CLASSES.get(top, ("human", "urban_form"))
        for key in region.keys:
            out.append(
                Candidate(
                    concept=text,
                    category=category,
                    subcategory=subcategory,
                    source=SOURCE,
                    region=key,
                    evidence=f"{n} OSM {'entity' if n == 1 else 'entities'} of class "
                    f"wkgs:{cls} in {region.name}",
                    url=WKGS + cls,
                    score=n / top_count,
                )
            )
    return out
