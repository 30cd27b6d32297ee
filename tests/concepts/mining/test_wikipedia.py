"""Wikipedia source: the real wikipedia-api client against a local MediaWiki API fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import CLIENT_TIMEOUT, FakeServices, fast_policy, require_data, wiki_extracts

from geoconcept_cli.concepts.mining.cache import ResponseCache
from geoconcept_cli.concepts.mining.wikipedia import (
    Article,
    cue_phrases,
    extract_candidates,
    fetch_article,
    open_client,
)
from geoconcept_cli.concepts.regions import Region, resolve_regions
from geoconcept_cli.errors import GeoconceptError

REGIONS = resolve_regions(["Taiga", "Savanna", "Japan", "Europe"])  # no record for "Europe"


@pytest.fixture
def fake() -> Iterator[FakeServices]:
    require_data()
    with FakeServices(articles=wiki_extracts([r.article for r in REGIONS])) as services:
        yield services


def fetch_all(
    fake: FakeServices, cache: ResponseCache, timeout: float = 5.0, **policy_kw: float
) -> list[Article | None]:
    policy, _ = fast_policy(**policy_kw)
    wiki = open_client(cache, policy, api_url=fake.wiki_api_url, timeout=timeout)
    return [fetch_article(wiki, region) for region in REGIONS]


def concepts(article: Article) -> set[str]:
    return {c.concept for c in extract_candidates(article)}


def test_real_articles_give_expected_concepts(fake: FakeServices, tmp_path: Path) -> None:
    taiga, savanna, japan, europe = fetch_all(fake, ResponseCache(tmp_path))
    assert europe is None  # the fake, like Wikipedia for a missing title, answers "missing"
    assert taiga is not None and savanna is not None and japan is not None
    assert taiga.url == "https://en.wikipedia.org/wiki/Taiga"
    assert {"coniferous forest", "boreal forest", "spruce", "larch", "pine"} <= concepts(taiga)
    assert {"savanna woodland", "grass", "shrub", "scattered tree"} <= concepts(savanna)
    assert "coastal plain" in " ".join(concepts(japan))

    rows = extract_candidates(taiga)
    larch = [c for c in rows if c.concept == "larch"]
    assert {c.region for c in larch} == {"Europe", "Asia", "North America"}
    assert all("larches" in c.evidence and c.source == "wikipedia" for c in larch)
    assert all((c.category, c.subcategory) == ("natural", "vegetation") for c in larch)
    assert max(c.score for c in rows) == 1.0 and min(c.score for c in rows) > 0


def test_only_topical_sections_are_mined(tmp_path: Path) -> None:
    article = (
        "Testland is a country.\n\n"
        "== History ==\nMonks built wooden pagodas.\n\n"
        "== Geography ==\nSnowy peaks rise above the plain.\n\n"
        "=== Climate ===\nThe monsoon floods the valleys.\n\n"
        "== Economy ==\nBanks own tall skyscrapers.\n\n"
        "=== Agriculture ===\nTerraced rice paddies cover the hills.\n"
    )
    region = Region(name="Testland", article="Testland", keys=("JP",), kind="country")
    with FakeServices(articles={"Testland": article}) as fake:
        wiki = open_client(ResponseCache(tmp_path), fast_policy()[0], api_url=fake.wiki_api_url)
        fetched = fetch_article(wiki, region)
    assert fetched is not None
    assert [title for title, _ in fetched.blocks] == ["", "Geography", "Climate", "Agriculture"]
    found = concepts(fetched)
    assert {"snowy peak", "plain", "monsoon", "valley", "terraced rice paddy", "hill"} <= found
    assert not found & {"wooden pagoda", "pagoda", "tall skyscraper", "skyscraper"}


def test_cue_phrases_keep_modifiers_and_skip_names() -> None:
    assert cue_phrases("Buddhist temples line the Sahara desert.") == ["buddhist temple", "desert"]
    assert cue_phrases("It has the longest coastline and many red tiled roofs.") == [
        "coastline",
        "red tiled roof",
    ]
    assert cue_phrases("The Great Barrier Reef lies off Queensland.") == []


def test_rerun_is_served_by_the_cache(fake: FakeServices, tmp_path: Path) -> None:
    first = fetch_all(fake, ResponseCache(tmp_path))
    fetched = fake.total()
    assert fetched == 7  # info + extracts for 3 articles, info only for the missing one
    again = fetch_all(fake, ResponseCache(tmp_path))
    offline = fetch_all(fake, ResponseCache(tmp_path, offline=True))
    assert fake.total() == fetched
    assert again == first == offline


def test_offline_with_empty_cache_names_the_missing_request(
    fake: FakeServices, tmp_path: Path
) -> None:
    with pytest.raises(GeoconceptError, match=r"offline: wikipedia info of article 'Taiga'"):
        fetch_all(fake, ResponseCache(tmp_path, offline=True))
    assert fake.total() == 0


@pytest.mark.parametrize(
    ("kind", "retry_after", "waits"),
    [("429", "7", [5.0, 5.0]), ("429", "1", [1.0, 1.0]), ("500", None, [0.5, 1.0])],
)
def test_rate_limits_and_server_errors_are_retried(
    fake: FakeServices, tmp_path: Path, kind: str, retry_after: str | None, waits: list[float]
) -> None:
    fake.inject("wikipedia", kind, times=2, retry_after=retry_after)
    policy, sleeps = fast_policy(attempts=3, max_retry_after=5.0)
    wiki = open_client(ResponseCache(tmp_path), policy, api_url=fake.wiki_api_url)
    article = fetch_article(wiki, REGIONS[0])
    assert article is not None and "spruce" in concepts(article)
    assert sleeps == waits  # Retry-After honoured up to the cap, else exponential backoff
    assert fake.requests["wikipedia"] == 2 + 2  # two faults, then info and extracts


def test_timeouts_are_retried(fake: FakeServices, tmp_path: Path) -> None:
    fake.inject("wikipedia", "timeout", times=1)
    policy, sleeps = fast_policy()
    wiki = open_client(
        ResponseCache(tmp_path), policy, api_url=fake.wiki_api_url, timeout=CLIENT_TIMEOUT
    )
    article = fetch_article(wiki, REGIONS[0])
    assert article is not None and article.title == "Taiga"
    assert sleeps == [0.5]


def test_permanent_failure_keeps_what_was_fetched_and_rerun_resumes(
    fake: FakeServices, tmp_path: Path
) -> None:
    fetch_all(fake, ResponseCache(tmp_path / "fresh"))
    fresh_total = fake.total()

    fake.inject("wikipedia", "500", times=1000, after=fresh_total + 3)
    with pytest.raises(GeoconceptError, match=r"HTTP 500 \(gave up after 3 tries"):
        fetch_all(fake, ResponseCache(tmp_path / "resume"))
    fetched_before = fake.served_ok["wikipedia"] - fresh_total
    assert fetched_before == 3

    fake.clear_faults()
    before_rerun = fake.total()
    result = fetch_all(fake, ResponseCache(tmp_path / "resume"))
    assert fake.total() - before_rerun == fresh_total - fetched_before
    assert result == fetch_all(fake, ResponseCache(tmp_path / "fresh"))
