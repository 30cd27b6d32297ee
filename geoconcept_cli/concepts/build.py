"""``build-concepts``: mine every source for every region, write candidates, update the review.

Sources run region by region through one response cache, so an interrupted build loses nothing
it fetched and a rerun (or an offline run) replays it. A region a source cannot answer (no
article, a malformed LLM reply) is listed in the report; a network failure that outlasts the
retries stops the build with a GeoconceptError.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import GeoconceptError
from ..io.artifacts import atomic_path, default_cache_dir
from .mining import llm as llm_source
from .mining import wikipedia as wikipedia_source
from .mining import worldkg as worldkg_source
from .mining.cache import ResponseCache
from .mining.http import RetryPolicy
from .mining.normalize import Candidate, normalize_candidates
from .regions import DEFAULT_REGIONS, Region
from .review import merge_review, read_review, write_review

CANDIDATES_SCHEMA = pa.schema(
    [
        ("concept", pa.string()),
        ("category", pa.string()),
        ("subcategory", pa.string()),
        ("source", pa.string()),
        ("region", pa.string()),
        ("evidence", pa.string()),
        ("url", pa.string()),
        ("score", pa.float64()),
    ]
)


def default_sources_cache() -> Path:
    """Where source responses are cached by default: <geoconcept cache>/concept-sources."""
    return default_cache_dir() / "concept-sources"


@dataclass
class BuildReport:
    """What a build did: outputs, rows per source, failures and cache use."""

    candidates_path: Path
    review_path: Path
    regions: int
    rows_per_source: dict[str, int] = field(default_factory=dict)
    concepts: int = 0
    review_rows: int = 0
    review_added: int = 0
    failures: list[str] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0


def build_candidates(
    regions: Sequence[Region] | None,
    out_dir: str | Path,
    *,
    wikipedia: bool = True,
    worldkg: bool = True,
    llm: bool = True,
    endpoint: str = worldkg_source.WORLDKG_ENDPOINT,
    llm_base_url: str | None = None,
    llm_model: str = llm_source.DEFAULT_MODEL,
    offline: bool = False,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    review_path: str | Path | None = None,
    wikipedia_api_url: str | None = None,
    timeout: float = 30.0,
    retry: RetryPolicy | None = None,
    llm_concepts: int = 25,
    similarity: float = 0.9,
    embed: Callable[[list[str]], np.ndarray] | None = None,
) -> BuildReport:
    """Write ``out_dir/candidates.parquet`` and merge it into the review file.

    ``regions`` defaults to DEFAULT_REGIONS; WorldKG is asked about continents and countries
    only (a biome has no place literal). ``review_path`` defaults to ``out_dir/review.csv``.
    ``wikipedia_api_url`` replaces https://en.wikipedia.org/w/api.php (a mirror); ``embed``
    (texts -> vectors) also merges candidates by embedding similarity.
    """
    regions = list(regions) if regions else list(DEFAULT_REGIONS)
    if not (wikipedia or worldkg or llm):
        raise GeoconceptError("every source is turned off: enable wikipedia, worldkg or llm")
    if llm and not offline and not os.environ.get(llm_source.API_KEY_ENV):
        raise GeoconceptError(
            f"the LLM source needs ${llm_source.API_KEY_ENV}: export it, turn the LLM source "
            "off, or run offline from cached replies"
        )
    out_dir = Path(out_dir)
    review_file = Path(review_path) if review_path else out_dir / "review.csv"
    existing = read_review(review_file) if review_file.exists() else None
    cache = ResponseCache(cache_dir or default_sources_cache(), offline=offline)
    policy = retry or RetryPolicy()
    say = progress or (lambda _line: None)
    report = BuildReport(
        candidates_path=out_dir / "candidates.parquet",
        review_path=review_file,
        regions=len(regions),
    )
    found: list[Candidate] = []

    if wikipedia:
        wiki = wikipedia_source.open_client(
            cache, policy, api_url=wikipedia_api_url, timeout=timeout
        )
        for i, region in enumerate(regions, 1):
            say(f"wikipedia {i}/{len(regions)}: {region.article}")
            article = wikipedia_source.fetch_article(wiki, region)
            if article is None:
                report.failures.append(f"wikipedia: no article {region.article!r}")
                continue
            found += wikipedia_source.extract_candidates(article)

    if worldkg:
        places = [r for r in regions if r.kind != "zone"]
        for i, region in enumerate(places, 1):
            say(f"worldkg {i}/{len(places)}: {region.name}")
            classes = worldkg_source.fetch_classes(
                region, cache, policy, endpoint=endpoint, timeout=timeout
            )
            if not classes:
                report.failures.append(f"worldkg: no classes for {region.name!r}")
            found += worldkg_source.extract_candidates(region, classes)

    if llm:
        asker = llm_source.LLMConcepts(
            cache,
            policy,
            model=llm_model,
            base_url=llm_base_url,
            timeout=timeout,
            concepts_per_region=llm_concepts,
        )
        for i, region in enumerate(regions, 1):
            say(f"llm {i}/{len(regions)}: {region.name}")
            result = asker.region(region)
            if result.error:
                report.failures.append(f"llm: {region.name}: {result.error}")
            found += llm_source.extract_candidates(result)

    table = normalize_candidates(found, threshold=similarity, embed=embed)
    with atomic_path(report.candidates_path) as tmp:
        pq.write_table(
            pa.Table.from_pandas(table, schema=CANDIDATES_SCHEMA, preserve_index=False), tmp
        )
    merged = merge_review(existing, table)
    write_review(review_file, merged)

    report.rows_per_source = dict(sorted(Counter(table["source"]).items()))
    report.concepts = int(table["concept"].nunique())
    report.review_rows = len(merged)
    report.review_added = len(merged) - (0 if existing is None else len(existing))
    report.cache_hits, report.cache_misses = cache.hits, cache.misses
    return report
