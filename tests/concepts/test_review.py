"""Review file: validation with line numbers, merging that keeps human edits, finalize."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geoconcept_cli import __version__
from geoconcept_cli.concepts.mining.normalize import Candidate, normalize_candidates
from geoconcept_cli.concepts.review import (
    REVIEW_COLUMNS,
    finalize,
    merge_review,
    read_review,
    write_review,
)
from geoconcept_cli.concepts.set import CONCEPTS_SCHEMA, concept_set_hash, load_concepts
from geoconcept_cli.errors import GeoconceptError

HEADER = ",".join(REVIEW_COLUMNS)
REVIEWED = [
    'rice paddy,human,agriculture,JP:1;CN:0.5,wikipedia;worldkg,"paddies, terraced",keep,',
    "pagoda,human,religious_building,JP:0.8,llm,tiered towers,rename:five-storey pagoda,",
    "mosque,human,architecture,FR:0.25,worldkg,1 OSM entity,recategorise:human/religious_building,",
    'snow,natural,sky_climate,Europe:1;Asia:1,wikipedia,"two\nlines",drop,too generic',
    "city,human,urban_form,FR:1,wikipedia,old evidence,pending,check later",
    "fjord,natural,water,NO:1,wikipedia,coast,pending,",
]


def write(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "review.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def candidate(
    concept: str, region: str, source: str = "wikipedia", score: float = 1.0
) -> Candidate:
    kind = {"trams": ("human", "vehicle"), "tram": ("human", "vehicle")}.get(
        concept, ("human", "urban_form")
    )
    return Candidate(concept, *kind, source, region, f"{concept} in {region}", "", score)


def test_finalize_applies_decisions_and_writes_the_schema(tmp_path: Path) -> None:
    review = write(tmp_path, REVIEWED)
    out = tmp_path / "set" / "concepts.parquet"
    finalize(review, out)

    assert pq.read_schema(out).remove_metadata() == CONCEPTS_SCHEMA
    got = load_concepts(out)
    assert list(got["concept"]) == ["rice paddy", "five-storey pagoda", "mosque"]
    assert list(got["subcategory"]) == ["agriculture", "religious_building", "religious_building"]
    assert got.loc[0, "regions"] == [
        {"region": "JP", "weight": 1.0},
        {"region": "CN", "weight": 0.5},
    ]
    assert got.loc[0, "sources"] == ["wikipedia", "worldkg"]

    meta = json.loads((out.parent / "concepts.meta.json").read_text())
    assert meta["review_sha256"] == hashlib.sha256(review.read_bytes()).hexdigest()
    assert meta["rows"] == {"keep": 1, "drop": 1, "pending": 2, "rename": 1, "recategorise": 1}
    assert meta["geoconcept_version"] == __version__
    assert meta["concept_set_hash"] == concept_set_hash(got)
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is not None


def test_concept_set_hash_follows_names_categories_and_order(tmp_path: Path) -> None:
    out = tmp_path / "concepts.parquet"
    finalize(write(tmp_path, REVIEWED), out)
    df = load_concepts(out)
    h = concept_set_hash(df)
    assert h == concept_set_hash(load_concepts(out))
    assert h != concept_set_hash(df.iloc[::-1])
    renamed = df.copy()
    renamed.loc[0, "concept"] = "rice field"
    assert h != concept_set_hash(renamed)
    recategorised = df.copy()
    recategorised.loc[0, "category"] = "natural"
    assert h != concept_set_hash(recategorised)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("tram,human,vehicle,PT:1,llm,ev,maybe,", r"review.csv:4: decision 'maybe'"),
        ("tram,human,vehicle,XX:1,llm,ev,keep,", r"review.csv:4: region 'XX:1'"),
        ("tram,human,vehicle,portugal:1,llm,ev,keep,", r"review.csv:4: region 'portugal:1'"),
        ("tram,human,vehicle,PT:1.5,llm,ev,keep,", r"review.csv:4: .*weight must be in \(0, 1\]"),
        ("tram,human,vehicle,PT:0,llm,ev,keep,", r"review.csv:4: .*weight must be in \(0, 1\]"),
        ("tram,human,vehicle,PT:high,llm,ev,keep,", r"review.csv:4: .*'high' is not a number"),
        ("tram,human,vehicle,PT:1;PT:0.5,llm,ev,keep,", r"review.csv:4: region 'PT' is listed"),
        ("tram,human,tram,PT:1,llm,ev,keep,", r"review.csv:4: category/subcategory human/tram"),
        ("tram,human,vehicle,PT:1,llm,ev,recategorise:human/forest,", r"review.csv:4: recat"),
        ("tram,human,vehicle,PT:1,llm,ev,rename:,", r"review.csv:4: rename: needs a new name"),
        ("tram,human,vehicle,PT:1,llm,ev,keep", r"review.csv:4: expected 8 fields, got 7"),
        ("Rice Paddy,human,agriculture,PT:1,llm,ev,keep,", r"review.csv:4: .*already .*line 2"),
    ],
)
def test_bad_rows_are_rejected_with_their_line(tmp_path: Path, row: str, message: str) -> None:
    # Row 1 is the header; the first data row spans lines 2-3 (a quoted newline).
    first = 'rice paddy,human,agriculture,JP:1,wikipedia,"two\nlines",keep,'
    with pytest.raises(GeoconceptError, match=message):
        finalize(write(tmp_path, [first, row]), tmp_path / "concepts.parquet")
    assert not (tmp_path / "concepts.parquet").exists()


def test_bad_header_and_duplicate_kept_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(GeoconceptError, match=r"review.csv:1: the header must be exactly"):
        read_review(write(tmp_path, REVIEWED, header=HEADER.replace("note", "notes")))
    rows = [*REVIEWED, "old pagoda,human,religious_building,CN:1,llm,ev,rename:Five-storey pagoda,"]
    with pytest.raises(GeoconceptError, match=r"review.csv:9: kept concept .* line 3"):
        finalize(write(tmp_path, rows), tmp_path / "concepts.parquet")


def test_merge_keeps_human_edits_and_adds_pending_rows(tmp_path: Path) -> None:
    existing = read_review(write(tmp_path, REVIEWED))
    fresh = normalize_candidates(
        [
            candidate("rice paddy", "VN"),  # decided row: must not change
            candidate("five-storey pagoda", "JP"),  # a rename target: already covered
            candidate("city", "JP", score=0.5),  # pending row: regions/evidence follow
            candidate("city", "FR"),
            candidate("trams", "PT", source="llm"),  # new
        ]
    )
    merged = merge_review(existing, fresh)

    decided = existing[existing["decision"] != "pending"][REVIEW_COLUMNS].reset_index(drop=True)
    assert merged.iloc[: len(decided)].equals(decided)
    rows = merged.set_index("concept")
    assert rows.loc["city", "regions"] == "FR:1;JP:0.5"
    assert rows.loc["city", "evidence"].startswith("wikipedia: city in FR")
    assert (rows.loc["city", "note"], rows.loc["city", "decision"]) == ("check later", "pending")
    assert (
        rows.loc["fjord"].tolist()
        == existing.set_index("concept").loc["fjord"][REVIEW_COLUMNS[1:]].tolist()
    )
    assert list(merged["concept"]) == [*existing["concept"], "tram"]
    assert rows.loc["tram"].tolist() == [
        "human",
        "vehicle",
        "PT:1",
        "llm",
        "llm: trams in PT",
        "pending",
        "",
    ]

    path = tmp_path / "merged.csv"
    write_review(path, merged)
    assert read_review(path)[REVIEW_COLUMNS].equals(merged)


def test_first_merge_lists_every_candidate_as_pending() -> None:
    fresh = normalize_candidates([candidate("tram", "PT"), candidate("tram", "AT", score=0.25)])
    merged = merge_review(None, fresh)
    assert merged.to_dict("records") == [
        {
            "concept": "tram",
            "category": "human",
            "subcategory": "vehicle",
            "regions": "PT:1;AT:0.25",
            "sources": "wikipedia",
            "evidence": "wikipedia: tram in PT",
            "decision": "pending",
            "note": "",
        }
    ]
