"""The concept set: the shipped set and its schema (``set``), the review file a person decides
in (``review``), the regions mined for (``regions``), and the mining of candidates from
Wikipedia, WorldKG and an LLM (``mining/``, merged by ``build``).

Names are imported lazily (PEP 562), so a stage that only reads concepts (training, explain)
does not import the network clients (openai, wikipedia-api, SPARQLWrapper).
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BuildReport": "build", "build_candidates": "build", "default_sources_cache": "build",
    "ResponseCache": "mining.cache", "RetryPolicy": "mining.http",
    "DEFAULT_LLM_MODEL": "mining.llm", "SUBCATEGORIES": "mining.normalize",
    "CONTINENTS": "regions", "DEFAULT_REGIONS": "regions",
    "Region": "regions", "resolve_regions": "regions", "REVIEW_COLUMNS": "review",
    "concept_set_hash": "set", "finalize": "review", "load_concepts": "set",
    "merge_review": "review", "read_review": "review", "write_review": "review",
    "WORLDKG_ENDPOINT": "mining.worldkg", "sparql_literal": "mining.worldkg",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = import_module(f".{_EXPORTS[name]}", __name__)
    return getattr(module, "DEFAULT_MODEL" if name == "DEFAULT_LLM_MODEL" else name)
