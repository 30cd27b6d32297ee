"""What one question asks beyond the model: one typed value, so that a new option is a field
here, not a parameter threaded through every layer."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GeoconceptError

MIN_DRAWS = 20  # fewer random draws cannot tell 95% apart from "all of them"


@dataclass(frozen=True)
class Request:
    """How many places (``top_k``), concepts (``concepts_shown``) and countries (``where``)
    to show; the deletion check of an explanation (``check`` removes the top ``m`` concepts
    and compares with ``draws`` random sets of ``m``, drawn from ``seed``); and ``heat``, the
    probability heatmap's points for a map (not part of the JSON)."""

    top_k: int = 5
    concepts_shown: int = 8
    countries: int = 10
    check: bool = False
    m: int = 3
    draws: int = MIN_DRAWS
    seed: int = 0
    heat: bool = False

    def __post_init__(self) -> None:
        for name in ("top_k", "concepts_shown", "countries", "m"):
            if getattr(self, name) < 1:
                raise GeoconceptError(f"--{name.replace('_', '-')} must be at least 1")
        if self.draws < MIN_DRAWS:
            raise GeoconceptError(f"--draws must be at least {MIN_DRAWS} (the verdict needs "
                                  "95% of the random draws beaten)")  # fmt: skip
