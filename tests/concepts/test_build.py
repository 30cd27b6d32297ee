"""build_candidates end to end: three real clients, three local fakes, one cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeServices, fast_policy, require_data, wiki_extracts

from geoconcept_cli.concepts import build_candidates, read_review, resolve_regions
from geoconcept_cli.concepts.review import REVIEW_COLUMNS, write_review
from geoconcept_cli.errors import GeoconceptError

KEY = "sk-build-test-7a6b5c4d-SECRET"
REGIONS = resolve_regions(["Taiga", "France", "JP", "Kenya"])
INSTANCES = [
    ("Vineyard", "addrCountry", "FR", 4),
    ("Mosque", "isInCountry", "France", 2),
    ("Temple", "addrCountry", "JP", 3),
]
JAPAN_REPLY = json.dumps(
    {
        "concepts": [
            {
                "name": "torii gate",
                "category": "human",
                "subcategory": "religious_building",
                "evidence": "Shinto shrines are entered through torii.",
            }
        ]
    }
)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServices]:
    require_data()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeServices(
        articles=wiki_extracts([r.article for r in REGIONS]),
        instances=INSTANCES,
        llm_replies={"Region: Japan": [JAPAN_REPLY], "Region: Kenya": ["no JSON today"]},
        api_key=KEY,
    ) as services:
        yield services


def build(fake: FakeServices, tmp_path: Path, **kw: Any):
    kw.setdefault("retry", fast_policy()[0])
    return build_candidates(
        kw.pop("regions", REGIONS),
        tmp_path / "out",
        endpoint=fake.sparql_url,
        llm_base_url=fake.llm_base_url,
        llm_model="test-model",
        wikipedia_api_url=fake.wiki_api_url,
        cache_dir=tmp_path / "cache",
        timeout=5.0,
        **kw,
    )


def candidates(tmp_path: Path) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "out" / "candidates.parquet")


def test_build_writes_candidates_and_a_pending_review(fake: FakeServices, tmp_path: Path) -> None:
    lines: list[str] = []
    report = build(fake, tmp_path, progress=lines.append)

    schema = pq.read_schema(tmp_path / "out" / "candidates.parquet")
    assert schema.names == [
        "concept",
        "category",
        "subcategory",
        "source",
        "region",
        "evidence",
        "url",
        "score",
    ]
    assert schema.field("score").type == pa.float64()
    df = candidates(tmp_path)
    by_source = {s: set(g["concept"]) for s, g in df.groupby("source")}
    assert {"coniferous forest", "larch"} <= by_source["wikipedia"]
    assert by_source["worldkg"] == {"vineyard", "mosque", "temple"}
    assert by_source["llm"] == {"torii gate"}
    assert report.rows_per_source == df["source"].value_counts().sort_index().to_dict()
    assert report.failures == [
        "worldkg: no classes for 'Kenya'",
        "llm: Kenya: malformed reply after 3 tries (the reply is not valid JSON (Expecting "
        "value: line 1 column 1 (char 0)))",
    ]
    assert report.cache_misses == fake.total() == 8 + 3 + 6 and report.cache_hits == 0
    assert lines[0] == "wikipedia 1/4: Taiga" and "worldkg 1/3: France" in lines

    review = read_review(tmp_path / "out" / "review.csv")
    assert (tmp_path / "out" / "review.csv").read_text().splitlines()[0] == ",".join(REVIEW_COLUMNS)
    assert set(review["decision"]) == {"pending"}
    assert len(review) == report.review_rows == report.review_added == df["concept"].nunique()
    vineyard = review.set_index("concept").loc["vineyard"]
    assert (vineyard["regions"], vineyard["sources"]) == ("FR:1", "worldkg")


def test_rerun_and_offline_run_replay_without_network(
    fake: FakeServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(fake, tmp_path)
    first, requests = candidates(tmp_path), fake.total()
    review = (tmp_path / "out" / "review.csv").read_text()

    again = build(fake, tmp_path)
    assert fake.total() == requests and again.cache_misses == 0
    pd.testing.assert_frame_equal(candidates(tmp_path), first)

    monkeypatch.delenv("OPENAI_API_KEY")
    offline = build(fake, tmp_path, offline=True)
    assert fake.total() == requests and offline.cache_hits == again.cache_hits
    pd.testing.assert_frame_equal(candidates(tmp_path), first)
    assert (tmp_path / "out" / "review.csv").read_text() == review


def test_offline_with_an_empty_cache_names_what_is_missing(
    fake: FakeServices, tmp_path: Path
) -> None:
    with pytest.raises(
        GeoconceptError, match=r"^offline: wikipedia info of article 'Taiga' \(http"
    ):
        build(fake, tmp_path, offline=True)
    with pytest.raises(GeoconceptError, match=r"^offline: worldkg query for region 'France'"):
        build(fake, tmp_path, offline=True, wikipedia=False)
    assert fake.total() == 0


def test_permanent_failure_keeps_the_cache_and_a_rerun_resumes(
    fake: FakeServices, tmp_path: Path
) -> None:
    build(fake, tmp_path / "fresh")
    fresh_total = fake.total()

    fake.inject("worldkg", "500", times=1000, after=fake.requests["worldkg"] + 1)
    with pytest.raises(GeoconceptError, match=r"worldkg query for region 'Japan'.*HTTP 500"):
        build(fake, tmp_path)
    assert not (tmp_path / "out" / "candidates.parquet").exists()
    fetched = sum(fake.served_ok.values()) - fresh_total
    assert fetched == 9  # 4 articles (info + extracts each) and the France query

    fake.clear_faults()
    before = fake.total()
    report = build(fake, tmp_path)
    assert fake.total() - before == report.cache_misses == fresh_total - fetched
    assert report.cache_hits == fetched
    pd.testing.assert_frame_equal(
        candidates(tmp_path), pd.read_parquet(tmp_path / "fresh" / "out" / "candidates.parquet")
    )


def test_the_api_key_is_never_written(fake: FakeServices, tmp_path: Path) -> None:
    build(fake, tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10
    assert not [p for p in files if KEY.encode() in p.read_bytes()]


def test_llm_without_a_key_is_refused_before_any_request(
    fake: FakeServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(GeoconceptError, match=r"OPENAI_API_KEY"):
        build(fake, tmp_path)
    assert fake.total() == 0
    report = build(fake, tmp_path, llm=False)
    assert set(report.rows_per_source) == {"wikipedia", "worldkg"}
    assert fake.requests["llm"] == 0


def test_sources_can_be_turned_off(fake: FakeServices, tmp_path: Path) -> None:
    report = build(fake, tmp_path, wikipedia=False, llm=False)
    assert set(report.rows_per_source) == {"worldkg"}
    assert (fake.requests["wikipedia"], fake.requests["llm"]) == (0, 0)
    with pytest.raises(GeoconceptError, match="every source is turned off"):
        build(fake, tmp_path, wikipedia=False, worldkg=False, llm=False)


def test_rebuild_keeps_review_decisions(fake: FakeServices, tmp_path: Path) -> None:
    build(fake, tmp_path, regions=REGIONS[:2])
    path = tmp_path / "out" / "review.csv"
    review = read_review(path)[REVIEW_COLUMNS]
    review.loc[review["concept"] == "vineyard", ["decision", "note"]] = ["keep", "clear cue"]
    review.loc[review["concept"] == "mosque", "decision"] = "recategorise:human/architecture"
    write_review(path, review)

    report = build(fake, tmp_path)  # adds Japan and Kenya
    merged = read_review(path)[REVIEW_COLUMNS]
    assert (
        merged.iloc[: len(review)]
        .drop(columns=["regions", "sources", "evidence"])
        .equals(review.drop(columns=["regions", "sources", "evidence"]))
    )
    assert (
        merged.set_index("concept").loc["vineyard"].tolist()
        == review.set_index("concept").loc["vineyard"].tolist()
    )
    assert {"temple", "torii gate"} <= set(merged["concept"].iloc[len(review) :])
    assert report.review_added == len(merged) - len(review) > 0


def test_resolve_regions_accepts_names_keys_and_custom_articles() -> None:
    taiga, france, japan, lux, rice = resolve_regions(
        ["taiga", "France", "jp", "LU=Luxembourg", "Asia, Oceania = Rice paddy"]
    )
    assert (taiga.kind, taiga.keys) == ("zone", ("Europe", "Asia", "North America"))
    assert (france.keys, japan.name) == (("FR",), "Japan")
    assert (lux.article, lux.keys, lux.kind) == ("Luxembourg", ("LU",), "country")
    assert (rice.article, rice.keys, rice.kind) == ("Rice paddy", ("Asia", "Oceania"), "zone")
    assert resolve_regions(["Europe"])[0].kind == "continent"
    with pytest.raises(GeoconceptError, match="unknown region 'Atlantis'"):
        resolve_regions(["Atlantis"])
    with pytest.raises(GeoconceptError, match=r"bad region key\(s\) \['XX'\]"):
        resolve_regions(["XX=Nowhere"])
