"""WorldKG source: the real SPARQLWrapper against a SPARQL fake running the real ontology."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rdflib
from fakes import CLIENT_TIMEOUT, FakeServices, fast_policy, require_data
from rdflib.plugins.sparql.algebra import translateQuery
from rdflib.plugins.sparql.parser import parseQuery

from geoconcept_cli.concepts.mining.cache import ResponseCache
from geoconcept_cli.concepts.mining.worldkg import (
    TOP_CLASSES,
    WKGS,
    camel_to_text,
    extract_candidates,
    fetch_classes,
    region_query,
    sparql_literal,
)
from geoconcept_cli.concepts.regions import Region, resolve_regions
from geoconcept_cli.errors import GeoconceptError

FRANCE, JAPAN, EUROPE = resolve_regions(["FR", "JP", "Europe"])
INSTANCES = [
    ("Vineyard", "addrCountry", "FR", 4),
    ("Mosque", "isInCountry", "France", 2),
    ("Accountant", "addrCountry", "FR", 9),  # an Office subclass: not a visual top class
    ("Temple", "addrCountry", "JP", 3),
    ("Vineyard", "addrCountry", "JP", 1),
    ("Glacier", "isInContinent", "Europe", 2),
]
HOSTILE = [
    'France" } ; DROP ALL ; #',
    'x") } } INSERT DATA { <a:b> <a:c> "d" } #',
    "C:\\users\\u0022 } \\U0001F600",
    'line\nbreak\r\ttab\'quote"""',
    "\\",
    'France") (wkgs:addrCountry "DE',
]


@pytest.fixture
def fake() -> Iterator[FakeServices]:
    require_data()
    with FakeServices(instances=INSTANCES) as services:
        yield services


def shape(node: Any, literals: list[str]) -> Any:
    """The query algebra with literals replaced by a marker (collected in order of appearance)."""
    if isinstance(node, rdflib.Literal):
        literals.append(str(node))
        return "LITERAL"
    if isinstance(node, dict):  # CompValue is a dict subclass
        name = getattr(node, "name", "dict")
        return (name, tuple((k, shape(v, literals)) for k, v in sorted(node.items())))
    if isinstance(node, (list, tuple)):
        return tuple(shape(v, literals) for v in node)
    if isinstance(node, (set, frozenset)):
        return tuple(sorted(repr(v) for v in node))
    return repr(node)


def parsed(query: str) -> tuple[Any, list[str]]:
    literals: list[str] = []
    return shape(translateQuery(parseQuery(query)).algebra, literals), literals


def country(name: str) -> Region:
    return Region(name=name, article="France", keys=("FR",), kind="country")


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_region_name_cannot_change_the_query(name: str) -> None:
    expected_shape, _ = parsed(region_query(country("France"), list(TOP_CLASSES)))
    got_shape, literals = parsed(region_query(country(name), list(TOP_CLASSES)))
    assert got_shape == expected_shape
    assert literals == [name, "FR"]  # the name round-trips as one literal, nothing else moved


def test_the_structure_check_catches_unescaped_names() -> None:
    """Pasted raw, a name can add a VALUES row and still parse: the check above sees that."""
    name = HOSTILE[-1]
    benign = region_query(country("France"), list(TOP_CLASSES))
    raw = benign.replace('"France"', f'"{name}"')
    expected_shape, _ = parsed(benign)
    raw_shape, literals = parsed(raw)
    assert raw_shape != expected_shape
    assert literals == ["France", "DE", "FR"]


def test_sparql_literal_escapes_per_grammar() -> None:
    assert sparql_literal("France") == '"France"'
    assert sparql_literal('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert sparql_literal("\\u0022") == '"\\\\\\U000000750022"'


def test_camel_case_class_names_become_concept_text() -> None:
    assert camel_to_text("RicePaddy") == "rice paddy"
    assert camel_to_text("PlaceOfWorship") == "place of worship"
    assert camel_to_text("CableCar") == "cable car"
    assert camel_to_text("ATM") == "atm"


def test_counts_per_region_from_the_real_ontology(fake: FakeServices, tmp_path: Path) -> None:
    cache, (policy, _) = ResponseCache(tmp_path), fast_policy()
    france = fetch_classes(FRANCE, cache, policy, endpoint=fake.sparql_url)
    assert france == [("Vineyard", "Landuse", 4), ("Mosque", "Building", 2)]
    assert fetch_classes(JAPAN, cache, policy, endpoint=fake.sparql_url) == [
        ("Temple", "Building", 3),
        ("Vineyard", "Landuse", 1),
    ]
    assert fetch_classes(EUROPE, cache, policy, endpoint=fake.sparql_url) == [
        ("Glacier", "Natural", 2)
    ]
    rows = {c.concept: c for c in extract_candidates(FRANCE, france)}
    assert set(rows) == {"vineyard", "mosque"}
    assert (rows["vineyard"].category, rows["vineyard"].subcategory) == ("human", "agriculture")
    assert rows["mosque"].subcategory == "religious_building"
    assert (rows["vineyard"].score, rows["mosque"].score) == (1.0, 0.5)
    assert rows["vineyard"].url == WKGS + "Vineyard" and rows["vineyard"].region == "FR"


def test_rerun_and_offline_are_served_by_the_cache(fake: FakeServices, tmp_path: Path) -> None:
    policy, _ = fast_policy()
    first = fetch_classes(FRANCE, ResponseCache(tmp_path), policy, endpoint=fake.sparql_url)
    assert fake.requests["worldkg"] == 1
    offline = ResponseCache(tmp_path, offline=True)
    assert fetch_classes(FRANCE, offline, policy, endpoint=fake.sparql_url) == first
    assert fake.requests["worldkg"] == 1
    with pytest.raises(GeoconceptError, match="offline: worldkg query for region 'Japan'"):
        fetch_classes(JAPAN, offline, policy, endpoint=fake.sparql_url)


@pytest.mark.parametrize(
    ("kind", "retry_after", "waits"),
    [("429", "2", [2.0, 2.0]), ("500", None, [0.5, 1.0]), ("timeout", None, [0.5, 1.0])],
)
def test_transient_errors_are_retried(
    fake: FakeServices, tmp_path: Path, kind: str, retry_after: str | None, waits: list[float]
) -> None:
    fake.inject("worldkg", kind, times=2, retry_after=retry_after)
    policy, sleeps = fast_policy()
    got = fetch_classes(
        FRANCE, ResponseCache(tmp_path), policy, endpoint=fake.sparql_url, timeout=CLIENT_TIMEOUT
    )
    assert got == [("Vineyard", "Landuse", 4), ("Mosque", "Building", 2)]
    assert sleeps == waits
    assert fake.requests["worldkg"] == 3


def test_persistent_errors_end_in_one_line(fake: FakeServices, tmp_path: Path) -> None:
    fake.inject("worldkg", "500", times=10)
    policy, _ = fast_policy()
    with pytest.raises(GeoconceptError) as err:
        fetch_classes(FRANCE, ResponseCache(tmp_path), policy, endpoint=fake.sparql_url)
    assert "\n" not in str(err.value) and "gave up after 3 tries" in str(err.value)
    assert not any(ResponseCache(tmp_path).root.rglob("*.json"))  # failures are not cached
