"""Normalisation: spelling, singular heads, typing from the keyword table, duplicate merging."""

from __future__ import annotations

import numpy as np
import pytest

from geoconcept_cli.concepts.mining.normalize import (
    KEYWORDS,
    PHRASES,
    SUBCATEGORIES,
    Candidate,
    classify,
    is_valid_type,
    merge_near_duplicates,
    normalize_candidates,
    normalize_name,
    singularize,
)


def cand(concept: str, category: str = "", subcategory: str = "", **kw: object) -> Candidate:
    fields = {"source": "wikipedia", "region": "FR", "evidence": "", "url": "", "score": 1.0}
    return Candidate(concept, category, subcategory, **(fields | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("paddies", "paddy"),
        ("roofs", "roof"),
        ("churches", "church"),
        ("volcanoes", "volcano"),
        ("houses", "house"),
        ("buses", "bus"),
        ("oases", "oasis"),
        ("cacti", "cactus"),
        ("leaves", "leaf"),
        ("grass", "grass"),
        ("species", "species"),
        ("cactus", "cactus"),
    ],
)
def test_singularize(plural: str, singular: str) -> None:
    assert singularize(plural) == singular


def test_normalize_name() -> None:
    assert normalize_name("  Terraced   Rice_Paddies. ") == "terraced rice paddy"
    assert normalize_name("Places of Worship") == "place of worship"
    assert normalize_name("!!") == ""


def test_keyword_table_only_uses_allowed_subcategories() -> None:
    assert all(is_valid_type(*kind) for kind in [*KEYWORDS.values(), *PHRASES.values()])
    used = {kind for kind in KEYWORDS.values()}
    assert used == {(c, s) for c, subs in SUBCATEGORIES.items() for s in subs}


def test_classify_by_phrase_then_head_noun() -> None:
    assert classify("terracotta roof tile") == ("human", "roof")
    assert classify("place of worship") == ("human", "religious_building")
    assert classify("zebra crossing") == ("human", "road_marking")
    assert classify("zebra") == ("natural", "fauna")
    assert classify("rice paddy") == ("human", "agriculture")
    assert classify("pine forest") == ("natural", "vegetation")
    assert classify("quantum flux") is None


def test_merge_near_duplicates_by_string() -> None:
    names = ["savanna", "savannah", "colour", "color", "pine forest", "fine forest", "tile roof"]
    mapping = merge_near_duplicates(names)
    assert mapping["savannah"] == "savanna" and mapping["color"] == "colour"
    assert mapping["fine forest"] == "fine forest"  # one letter changes a short word's meaning
    assert mapping["tile roof"] == "tile roof"


def test_merge_near_duplicates_with_an_embedding_hook() -> None:
    vectors = {"sidewalk": [1.0, 0.0], "pavement": [0.98, 0.2], "tram": [0.0, 1.0]}
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.array([vectors[t] for t in texts])

    mapping = merge_near_duplicates(list(vectors), embed=embed, embed_threshold=0.95)
    assert mapping == {"sidewalk": "sidewalk", "pavement": "sidewalk", "tram": "tram"}
    assert calls == [list(vectors)]
    assert merge_near_duplicates(list(vectors))["pavement"] == "pavement"


def test_normalize_candidates_types_merges_and_dedups() -> None:
    df = normalize_candidates(
        [
            cand("Rice Paddies", score=0.5),
            cand("rice paddy", score=1.0, evidence="best"),
            cand("Savannah", region="KE"),
            cand("savanna", region="KE"),
            cand("savanna", region="TZ"),
            cand("Torii gate", "human", "religious_building", source="llm"),
            cand("quantum flux"),  # no type from the source nor the keyword table: dropped
            cand("x" * 70),  # too long to be a concept name
        ]
    )
    assert list(df.columns) == [
        "concept",
        "category",
        "subcategory",
        "source",
        "region",
        "evidence",
        "url",
        "score",
    ]
    rows = {(r.concept, r.region): r for r in df.itertuples()}
    assert set(rows) == {
        ("rice paddy", "FR"),
        ("savanna", "KE"),
        ("savanna", "TZ"),
        ("torii gate", "FR"),
    }
    assert rows["rice paddy", "FR"].score == 1.0 and rows["rice paddy", "FR"].evidence == "best"
    assert rows["torii gate", "FR"].subcategory == "religious_building"  # the source's type kept
    assert (rows["savanna", "KE"].category, rows["savanna", "KE"].subcategory) == (
        "natural",
        "terrain",
    )


def test_normalize_candidates_of_nothing_is_an_empty_table() -> None:
    df = normalize_candidates([])
    assert df.empty and "score" in df.columns
