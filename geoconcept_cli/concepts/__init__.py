"""Building the concept set: mine Wikipedia, WorldKG and an LLM per region, review, finalize.

``build_candidates`` writes ``candidates.parquet`` and merges it into the review CSV;
``finalize`` turns the reviewed CSV into ``concepts.parquet``; ``load_concepts`` and
``concept_set_hash`` serve later steps (embed-concepts).

Names are imported lazily (PEP 562), so a stage that only reads concepts (training,
explain) does not import the network clients (openai, wikipedia-api, SPARQLWrapper).
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BuildReport": "build", "build_candidates": "build", "default_sources_cache": "build",
    "ResponseCache": "cache", "RetryPolicy": "http", "DEFAULT_LLM_MODEL": "llm",
    "SUBCATEGORIES": "normalize", "CONTINENTS": "regions", "DEFAULT_REGIONS": "regions",
    "Region": "regions", "resolve_regions": "regions", "REVIEW_COLUMNS": "review",
    "concept_set_hash": "review", "finalize": "review", "load_concepts": "review",
    "merge_review": "review", "read_review": "review", "write_review": "review",
    "WORLDKG_ENDPOINT": "worldkg", "sparql_literal": "worldkg",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = import_module(f".{_EXPORTS[name]}", __name__)
    return getattr(module, "DEFAULT_MODEL" if name == "DEFAULT_LLM_MODEL" else name)
