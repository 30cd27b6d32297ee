"""LLM source: the real openai client against a local chat-completions fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import CLIENT_TIMEOUT, FakeServices, fast_policy

from geoconcept_cli.concepts.mining.cache import ResponseCache
from geoconcept_cli.concepts.mining.llm import LLMConcepts, extract_candidates, validate_reply
from geoconcept_cli.concepts.regions import resolve_regions
from geoconcept_cli.errors import GeoconceptError

KEY = "sk-test-9f8e7d6c5b4a-SECRET"
JAPAN, KENYA = resolve_regions(["Japan", "Kenya"])
JAPAN_REPLY = json.dumps(
    {
        "concepts": [
            {
                "name": "Torii gates",
                "category": "human",
                "subcategory": "religious_building",
                "evidence": "Shinto shrines are entered through vermilion torii.",
            },
            {
                "name": "kei car",
                "category": "human",
                "subcategory": "vehicle",
                "evidence": "Small boxy kei cars are common on Japanese roads.",
            },
        ]
    }
)
WRONG_TYPE = JAPAN_REPLY.replace('"vehicle"', '"vegetation"')


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServices]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    replies = {"Region: Japan": [JAPAN_REPLY], "Region: Kenya": ["Sure! Here are concepts:"]}
    with FakeServices(llm_replies=replies, api_key=KEY) as services:
        yield services


def asker(
    fake: FakeServices,
    cache_dir: Path,
    *,
    timeout: float = 5.0,
    offline: bool = False,
    corrections: int = 2,
) -> LLMConcepts:
    return LLMConcepts(
        ResponseCache(cache_dir, offline=offline),
        fast_policy()[0],
        model="test-model",
        base_url=fake.llm_base_url,
        timeout=timeout,
        corrections=corrections,
    )


def test_valid_reply_becomes_candidates(fake: FakeServices, tmp_path: Path) -> None:
    result = asker(fake, tmp_path).region(JAPAN)
    assert result.error is None
    rows = extract_candidates(result)
    assert [(r.concept, r.subcategory, r.region, r.source) for r in rows] == [
        ("Torii gates", "religious_building", "JP", "llm"),
        ("kei car", "vehicle", "JP", "llm"),
    ]
    body = fake.llm_bodies[0]
    assert body["model"] == "test-model"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert "Region: Japan (region keys: JP)" in body["messages"][1]["content"]


@pytest.mark.parametrize("bad", ["not json {", WRONG_TYPE, '{"concepts": [{"name": "x"}]}'])
def test_malformed_reply_is_corrected(fake: FakeServices, tmp_path: Path, bad: str) -> None:
    fake.llm_replies["Region: Japan"] = [bad, JAPAN_REPLY]
    result = asker(fake, tmp_path).region(JAPAN)
    assert result.error is None and len(result.concepts) == 2
    assert fake.requests["llm"] == 2
    retry = fake.llm_bodies[1]["messages"]
    assert retry[2] == {"role": "assistant", "content": bad}
    assert retry[3]["role"] == "user" and "invalid" in retry[3]["content"]


def test_always_malformed_region_fails_without_raising(fake: FakeServices, tmp_path: Path) -> None:
    result = asker(fake, tmp_path, corrections=2).region(KENYA)
    assert result.concepts == [] and result.error is not None
    assert "malformed reply after 3 tries" in result.error
    assert fake.requests["llm"] == 3


def test_validate_reply_checks_the_schema() -> None:
    assert len(validate_reply(JAPAN_REPLY)) == 2
    for bad in ["", "[]", '{"concepts": {}}', WRONG_TYPE, '{"concepts": [], "extra": 1}']:
        with pytest.raises(ValueError):
            validate_reply(bad)


@pytest.mark.parametrize("kind", ["429", "500", "timeout"])
def test_transient_errors_are_retried(fake: FakeServices, tmp_path: Path, kind: str) -> None:
    fake.inject("llm", kind, times=1, retry_after="1")
    result = asker(fake, tmp_path, timeout=CLIENT_TIMEOUT).region(JAPAN)
    assert result.error is None and len(result.concepts) == 2
    assert fake.requests["llm"] == 2


def test_cached_replies_replay_offline_without_a_key(
    fake: FakeServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.llm_replies["Region: Japan"] = ["oops", JAPAN_REPLY]
    first = asker(fake, tmp_path).region(JAPAN)
    monkeypatch.delenv("OPENAI_API_KEY")
    again = asker(fake, tmp_path, offline=True).region(JAPAN)
    assert again == first and fake.requests["llm"] == 2
    with pytest.raises(GeoconceptError, match="offline: llm .* region 'Kenya'"):
        asker(fake, tmp_path, offline=True).region(KENYA)


def test_the_key_stays_out_of_files_and_errors(
    fake: FakeServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asker(fake, tmp_path).region(JAPAN)
    asker(fake, tmp_path).region(KENYA)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not any(KEY.encode() in p.read_bytes() for p in files)

    wrong = "sk-wrong-0123456789-LEAKME"
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    with pytest.raises(GeoconceptError) as err:
        asker(fake, tmp_path / "other").region(JAPAN)  # the fake echoes the key it got
    assert "HTTP 401" in str(err.value) and wrong not in str(err.value)
    assert wrong not in repr(err.value.__cause__) and err.value.__suppress_context__
