"""What one question asks beyond the model: one typed value, so that a new option is a field
here, not a parameter threaded through every layer."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from ..errors import GeoconceptError
from ..geo.limits import Limits
from .abstention import check_level

HINT_WEIGHT = 0.25  # a hint's log-probabilities, against a photo's 1 (README: planted hints)

MIN_DRAWS = 20  # fewer random draws cannot tell 95% apart from "all of them"
MERGE_KM = 5.0  # gallery points this close form one candidate (inference.sites says why)
MAX_HINT_WEIGHT = 10  # beyond, the photo no longer counts
MAX_HINT_CHARS = 300  # as a where query
MAX_MERGE_KM = 500  # wider, one candidate would stand for a country
MAX_SHOWN = 100  # places, concepts or countries listed at most: the command's rule and the API's


@dataclass(frozen=True)
class Request:
    """How many places (``top_k``), concepts (``concepts_shown``) and countries (``where``)
    to show; the deletion check of an explanation (``check`` removes the top ``m`` concepts
    and compares with ``draws`` random sets of ``m``, drawn from ``seed``); and ``heat``, the
    probability heatmap's points for a map (not part of the JSON); ``merge_km``, the radius
    within which gallery points form one candidate (0: every point its own); ``limits``, where
    the answer may lie (geo.limits: the whole gallery when empty); ``hints``, what the person
    knows in words, weighted ``hint_weight`` against the photo (Predictor.hint_prior);
    ``abstain_below``, the confidence below which a photo is "not localizable at this
    confidence" (inference.abstention; None: the calibration's level, 0: always answer)."""

    top_k: int = 5
    concepts_shown: int = 8
    countries: int = 10
    check: bool = False
    m: int = 3
    draws: int = MIN_DRAWS
    seed: int = 0
    heat: bool = False
    merge_km: float = MERGE_KM
    limits: Limits = Limits()
    hints: tuple[str, ...] = ()
    hint_weight: float = HINT_WEIGHT
    abstain_below: float | None = None

    def __post_init__(self) -> None:
        for name in ("top_k", "concepts_shown", "countries", "m"):
            if getattr(self, name) < 1:
                raise GeoconceptError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("top_k", "concepts_shown", "countries"):
            if getattr(self, name) > MAX_SHOWN:
                raise GeoconceptError(
                    f"--{name.replace('_', '-')} {getattr(self, name)}: at most {MAX_SHOWN} "
                    f"are listed (the server's limit too); give {MAX_SHOWN} or fewer"
                )
        if not 0 <= self.merge_km <= MAX_MERGE_KM:
            raise GeoconceptError(f"--merge-km {self.merge_km:g}: give 0 (every gallery point "
                                  f"its own candidate) to {MAX_MERGE_KM:g} km")  # fmt: skip
        if not 0 < self.hint_weight <= MAX_HINT_WEIGHT:
            raise GeoconceptError(f"--hint-weight {self.hint_weight:g}: give a weight above 0 "
                                  f"and at most {MAX_HINT_WEIGHT:g} (1: a hint counts as much "
                                  "as the photo)")  # fmt: skip
        if any(not h.strip() or len(h) > MAX_HINT_CHARS for h in self.hints):
            raise GeoconceptError(f"--hint: give words, at most {MAX_HINT_CHARS} characters")
        if self.abstain_below is not None:
            check_level(self.abstain_below)
        if self.draws < MIN_DRAWS:
            raise GeoconceptError(f"--draws must be at least {MIN_DRAWS} (the verdict needs "
                                  "95% of the random draws beaten)")  # fmt: skip


def say_if_capped(option: str, asked: int, there: int, what: str) -> None:
    """A one-line warning when a request asks for more than there is (``there`` ``what``):
    all of them are listed, and the user is told so rather than left to count."""
    if asked > there:
        warnings.warn(f"{option} {asked}: {there} {what}, all listed", stacklevel=3)
