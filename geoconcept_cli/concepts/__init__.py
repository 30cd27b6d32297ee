"""Building the concept set: mine Wikipedia, WorldKG and an LLM per region, review, finalize.

``build_candidates`` writes ``candidates.parquet`` and merges it into the review CSV;
``finalize`` turns the reviewed CSV into ``concepts.parquet``; ``load_concepts`` and
``concept_set_hash`` serve later steps (embed-concepts).
"""

from .build import BuildReport, build_candidates, default_sources_cache
from .cache import ResponseCache
from .http import RetryPolicy
from .llm import DEFAULT_MODEL as DEFAULT_LLM_MODEL
from .normalize import SUBCATEGORIES
from .regions import CONTINENTS, DEFAULT_REGIONS, Region, resolve_regions
from .review import (
    REVIEW_COLUMNS,
    concept_set_hash,
    finalize,
    load_concepts,
    merge_review,
    read_review,
    write_review,
)
from .worldkg import WORLDKG_ENDPOINT, sparql_literal

__all__ = [
    "CONTINENTS",
    "DEFAULT_LLM_MODEL",
    "DEFAULT_REGIONS",
    "REVIEW_COLUMNS",
    "SUBCATEGORIES",
    "WORLDKG_ENDPOINT",
    "BuildReport",
    "Region",
    "ResponseCache",
    "RetryPolicy",
    "build_candidates",
    "concept_set_hash",
    "default_sources_cache",
    "finalize",
    "load_concepts",
    "merge_review",
    "read_review",
    "resolve_regions",
    "sparql_literal",
    "write_review",
]
