"""Fine-grained visual and cultural concepts per region from an LLM, via the openai client.

The reply must be JSON of a fixed schema; a malformed reply is sent back with the error for a
bounded number of corrections, after which the region is reported as failed (not fatal). The
API key comes only from $OPENAI_API_KEY and is never written to the cache, logs or errors:
cache keys and entries hold the request body, never headers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, cast

import openai

from ...errors import GeoconceptError
from ..regions import Region
from .cache import Response, ResponseCache
from .http import (
    RetryPolicy,
    TransientError,
    parse_retry_after,
    with_retries,
)
from .normalize import SUBCATEGORIES, Candidate, is_valid_type

SOURCE = "llm"
API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_NAME_WORDS = 6

_ALL_SUBCATEGORIES = sorted({s for subs in SUBCATEGORIES.values() for s in subs})
REPLY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "concepts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "category": {"type": "string", "enum": sorted(SUBCATEGORIES)},
                    "subcategory": {"type": "string", "enum": _ALL_SUBCATEGORIES},
                    "evidence": {"type": "string"},
                },
                "required": ["name", "category", "subcategory", "evidence"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["concepts"],
    "additionalProperties": False,
}

SYSTEM_PROMPT = (
    "You help build the concept vocabulary of an interpretable image geo-localization model. "
    "You name concrete things a photo can show that are characteristic of a region. "
    "Reply with one JSON object only."
)


def region_prompt(region: Region, n: int) -> str:
    """The user message asking for ``n`` concepts for one region."""
    subcategories = "; ".join(f"{cat}: {', '.join(subs)}" for cat, subs in SUBCATEGORIES.items())
    return (
        f"Region: {region.name} (region keys: {', '.join(region.keys)}).\n"
        f"List up to {n} fine-grained visual and cultural concepts that a street-level or "
        "landscape photo taken in this region could show and that help tell it apart from "
        "other regions: vegetation, terrain, water, climate cues, architecture, roofs, "
        "religious buildings, road markings, road signs, street furniture, scripts, vehicles, "
        "utility infrastructure, agriculture, clothing and the like.\n"
        "Use short lower-case singular noun phrases (1 to 4 words). For each concept give its "
        "category (natural or human), a subcategory from this list, matching the category ("
        f"{subcategories}), and one sentence of evidence saying why it is characteristic.\n"
        'Reply as {"concepts": [{"name": ..., "category": ..., "subcategory": ..., '
        '"evidence": ...}]}.'
    )


def validate_reply(content: str | None) -> list[dict[str, str]]:
    """The concepts of a reply, or ValueError saying what breaks the schema."""
    if not content:
        raise ValueError("the reply is empty")
    try:
        data = json.loads(content)
    except ValueError as err:
        raise ValueError(f"the reply is not valid JSON ({err})") from err
    if not isinstance(data, dict) or set(data) != {"concepts"}:
        raise ValueError('the reply must be an object with exactly one key, "concepts"')
    concepts = data["concepts"]
    if not isinstance(concepts, list):
        raise ValueError('"concepts" must be a list')
    fields = {"name", "category", "subcategory", "evidence"}
    for i, item in enumerate(concepts):
        if not isinstance(item, dict) or set(item) != fields:
            raise ValueError(f"concept {i} must have exactly the keys {sorted(fields)}")
        if not all(isinstance(item[k], str) and item[k].strip() for k in fields):
            raise ValueError(f"concept {i}: every field must be a non-empty string")
        if len(item["name"].split()) > MAX_NAME_WORDS:
            raise ValueError(f"concept {i}: name longer than {MAX_NAME_WORDS} words")
        if not is_valid_type(item["category"], item["subcategory"]):
            raise ValueError(
                f"concept {i}: subcategory {item['subcategory']!r} is not one of "
                f"category {item['category']!r}"
            )
    return concepts


@dataclass
class RegionConcepts:
    """The LLM's concepts for a region, or why there are none (``error``)."""

    region: Region
    concepts: list[dict[str, str]]
    error: str | None = None


class LLMConcepts:
    """Asks an OpenAI-compatible chat endpoint for region concepts, through the cache."""

    def __init__(
        self,
        cache: ResponseCache,
        policy: RetryPolicy,
        *,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        timeout: float = 60.0,
        concepts_per_region: int = 25,
        corrections: int = 2,
    ) -> None:
        self.cache = cache
        self.policy = policy
        self.model = model
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.concepts_per_region = concepts_per_region
        self.corrections = corrections
        self._client: openai.OpenAI | None = None

    def _openai(self) -> openai.OpenAI:
        """The client, made on first network use so offline replays need no key."""
        if self._client is None:
            key = os.environ.get(API_KEY_ENV)
            if not key:
                raise GeoconceptError(f"llm: ${API_KEY_ENV} is not set")
            self._client = openai.OpenAI(
                api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout
            )
        return self._client

    def _complete(self, body: dict[str, Any], what: str) -> Response:
        """One chat completion round trip, failures sorted into retryable and not."""
        try:
            raw = self._openai().chat.completions.with_raw_response.create(**body)
            text = raw.text
        except openai.APITimeoutError as err:
            raise TransientError("timed out") from err
        except openai.APIConnectionError as err:
            raise TransientError("connection failed") from err
        except openai.RateLimitError as err:
            retry_after = parse_retry_after(err.response.headers.get("Retry-After"))
            raise TransientError("HTTP 429 (rate limited)", retry_after) from err
        except openai.InternalServerError as err:
            raise TransientError(f"HTTP {err.status_code}") from err
        except openai.APIStatusError as err:
            # The server's message is left out on purpose: some echo part of the key.
            raise GeoconceptError(
                f"{what}: rejected with HTTP {err.status_code}; check ${API_KEY_ENV}, the model "
                f"name ({self.model!r}) and the base URL ({self.base_url})"
            ) from None
        return {"status": 200, "content_type": "application/json", "body": text}

    def _ask(self, messages: list[dict[str, str]], what: str) -> str | None:
        """The assistant's reply text for a conversation (cached by request body)."""
        body = {
            "model": self.model,
            "messages": messages,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "region_concepts", "strict": True, "schema": REPLY_SCHEMA},
            },
        }
        stored = self.cache.fetch(
            SOURCE,
            f"{self.base_url}/chat/completions",
            body,
            lambda: with_retries(lambda: self._complete(body, what), what=what, policy=self.policy),
            what=what,
        )
        try:
            content = json.loads(stored["body"])["choices"][0]["message"]["content"]
            return cast(str | None, content)  # the API's message content: a string or null
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def region(self, region: Region) -> RegionConcepts:
        """Concepts for one region; malformed replies are corrected up to ``corrections`` times."""
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": region_prompt(region, self.concepts_per_region)},
        ]
        what = f"llm ({self.model}) request for region {region.name!r}"
        error = ""
        for attempt in range(self.corrections + 1):
            content = self._ask(messages, f"{what}, try {attempt + 1}")
            try:
                return RegionConcepts(region, validate_reply(content))
            except ValueError as err:
                error = str(err)
            messages = [
                *messages,
                {"role": "assistant", "content": content or ""},
                {
                    "role": "user",
                    "content": f"That reply is invalid: {error}. Reply again with only the "
                    "corrected JSON object.",
                },
            ]
        return RegionConcepts(
            region, [], f"malformed reply after {self.corrections + 1} tries ({error})"
        )


def extract_candidates(result: RegionConcepts) -> list[Candidate]:
    """Candidates of one region's reply, one per concept and region key, score 1."""
    return [
        Candidate(
            concept=item["name"],
            category=item["category"],
            subcategory=item["subcategory"],
            source=SOURCE,
            region=key,
            evidence=item["evidence"],
            url="",
            score=1.0,
        )
        for item in result.concepts
        for key in result.region.keys
    ]
